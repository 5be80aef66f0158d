//! The landmark CSV: header `image,x0,y0,…,x{T-1},y{T-1}`, one row per image with a face, pixel
//! coordinates in the image as stored. Any number of points T; images without a row (no face
//! found) are simply absent, and lookups return a presence mask rather than invented points.
//!
//! Writing goes to a temporary file in the same folder and is renamed into place, so a crash never
//! leaves a half-written CSV.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Landmarks of many images, keyed by image name (relative path with `/`), in insertion order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LandmarkTable {
    n_points: usize,
    rows: Vec<(String, Vec<f32>)>,
    index: HashMap<String, usize>,
}

/// Landmarks looked up for a list of images: `points` is `[n, 2T]` (zeros where absent) and
/// `present[i]` says whether image `i` had a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Landmarks {
    /// Points per face, T.
    pub n_points: usize,
    /// `[n, 2T]` row-major `x0, y0, x1, y1, …`; zeros for absent rows.
    pub points: Vec<f32>,
    /// Which images have landmarks.
    pub present: Vec<bool>,
}

impl LandmarkTable {
    /// An empty table of `n_points` points per face.
    pub fn new(n_points: usize) -> Self {
        Self { n_points, ..Default::default() }
    }

    /// Points per face, T.
    pub fn n_points(&self) -> usize {
        self.n_points
    }

    /// Number of images with landmarks.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no image has landmarks.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The `2T` coordinates of an image, if it has a row.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.index.get(name).map(|&i| self.rows[i].1.as_slice())
    }

    /// Rows in insertion order.
    pub fn rows(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.rows.iter().map(|(n, p)| (n.as_str(), p.as_slice()))
    }

    /// Adds a row. Fails with the position of the earlier row when `name` is already present.
    ///
    /// # Panics
    /// When `points.len() != 2 * n_points` (a programming error; readers check lengths first).
    pub fn insert(&mut self, name: &str, points: Vec<f32>) -> std::result::Result<(), usize> {
        assert_eq!(points.len(), 2 * self.n_points, "landmark row length");
        if let Some(&row) = self.index.get(name) {
            return Err(row);
        }
        self.index.insert(name.to_string(), self.rows.len());
        self.rows.push((name.to_string(), points));
        Ok(())
    }

    /// Looks up each name; absent names get zeros and `present = false`.
    pub fn lookup<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Landmarks {
        let mut points = Vec::new();
        let mut present = Vec::new();
        for name in names {
            match self.get(name) {
                Some(p) => points.extend_from_slice(p),
                None => points.resize(points.len() + 2 * self.n_points, 0.0),
            }
            present.push(self.index.contains_key(name));
        }
        Landmarks { n_points: self.n_points, points, present }
    }

    /// Reads a landmark CSV, checking the header, row lengths, numbers and unique names.
    pub fn read(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(file);
        let mut records = reader.records();
        let header = match records.next() {
            Some(h) => h.map_err(|e| csv_error(path, e))?,
            None => return Err(Error::parse(path, 1, "empty file (expected the header `image,x0,y0,…`)")),
        };
        let n_points = parse_header(&header).map_err(|msg| Error::parse(path, 1, msg))?;
        let mut table = LandmarkTable::new(n_points);
        let mut line_of_row = Vec::new();
        for record in records {
            let record = record.map_err(|e| csv_error(path, e))?;
            let line = record.position().map_or(0, |p| p.line() as usize);
            let name = record.get(0).unwrap_or_default().to_string();
            if record.len() != 1 + 2 * n_points {
                return Err(Error::parse(path, line, format!(
                    "`{name}`: expected {} coordinates, found {}", 2 * n_points, record.len().saturating_sub(1)
                )));
            }
            let points = record
                .iter()
                .skip(1)
                .map(|f| match f.trim().parse::<f32>() {
                    Ok(v) if v.is_finite() => Ok(v),
                    _ => Err(Error::parse(path, line, format!("`{name}`: `{f}` is not a finite number"))),
                })
                .collect::<Result<Vec<f32>>>()?;
            table.insert(&name, points).map_err(|row| {
                Error::parse(path, line, format!("duplicate image `{name}` (first on line {})", line_of_row[row]))
            })?;
            line_of_row.push(line);
        }
        Ok(table)
    }

    /// Writes the table as CSV, atomically (temporary file in the same folder, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut out = Vec::new();
        out.extend_from_slice(b"image");
        for i in 0..self.n_points {
            let _ = write!(out, ",x{i},y{i}");
        }
        out.push(b'\n');
        for (name, points) in &self.rows {
            out.extend_from_slice(csv_field(name).as_bytes());
            for v in points {
                let _ = write!(out, ",{v}");
            }
            out.push(b'\n');
        }
        crate::fsutil::write_atomic(path, &out).map_err(|e| Error::io(path, e))
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map_or(0, |p| p.line() as usize);
    Error::parse(path, line, format!("malformed CSV: {e}"))
}

/// Quotes a name if CSV needs it (commas, quotes or line breaks).
fn csv_field(name: &str) -> String {
    if name.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_string()
    }
}

/// Checks `image,x0,y0,…` and returns T.
fn parse_header(header: &csv::StringRecord) -> std::result::Result<usize, String> {
    let fields: Vec<&str> = header.iter().map(str::trim).collect();
    if fields.first() != Some(&"image") || fields.len() < 3 || fields.len().is_multiple_of(2) {
        return Err(format!(
            "header must be `image,x0,y0,…,x{{T-1}},y{{T-1}}`, found `{}`",
            fields.join(",")
        ));
    }
    let n_points = (fields.len() - 1) / 2;
    for i in 0..n_points {
        let (x, y) = (fields[1 + 2 * i], fields[2 + 2 * i]);
        if x != format!("x{i}") || y != format!("y{i}") {
            return Err(format!("header column {} is `{x},{y}`, expected `x{i},y{i}`", 2 + 2 * i));
        }
    }
    Ok(n_points)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(text: &str) -> Result<LandmarkTable> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lm.csv");
        std::fs::write(&p, text).unwrap();
        LandmarkTable::read(&p)
    }

    fn err(text: &str) -> String {
        let e = read_str(text).unwrap_err().to_string();
        e.rsplit_once("lm.csv").unwrap().1.to_string()
    }

    #[test]
    fn round_trip_and_lookup_mask() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.csv");
        let mut t = LandmarkTable::new(2);
        t.insert("a/b.jpg", vec![1.5, 2.0, 3.0, -4.25]).unwrap();
        t.insert("c,d.jpg", vec![0.0, 0.0, 10.0, 20.0]).unwrap();
        assert_eq!(t.insert("a/b.jpg", vec![0.0; 4]), Err(0));
        t.write(&p).unwrap();
        let back = LandmarkTable::read(&p).unwrap();
        assert_eq!(back, t);
        let l = back.lookup(["c,d.jpg", "missing.jpg", "a/b.jpg"]);
        assert_eq!(l.present, [true, false, true]);
        assert_eq!(l.points, [0.0, 0.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0, 1.5, 2.0, 3.0, -4.25]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn bad_header() {
        assert_eq!(err("name,x0,y0\n"), ":1: header must be `image,x0,y0,…,x{T-1},y{T-1}`, found `name,x0,y0`");
        assert_eq!(err("image,x0,y1\n"), ":1: header column 2 is `x0,y1`, expected `x0,y0`");
        assert_eq!(err(""), ":1: empty file (expected the header `image,x0,y0,…`)");
    }

    #[test]
    fn bad_rows() {
        assert_eq!(err("image,x0,y0\na.jpg,1\n"), ":2: `a.jpg`: expected 2 coordinates, found 1");
        assert_eq!(err("image,x0,y0\na.jpg,1,nan\n"), ":2: `a.jpg`: `nan` is not a finite number");
        assert_eq!(err("image,x0,y0\na.jpg,1,2\n\nb.jpg,1,2\na.jpg,3,4\n"), ":5: duplicate image `a.jpg` (first on line 2)");
    }
}
