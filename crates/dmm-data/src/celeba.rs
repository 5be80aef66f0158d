//! CelebA's official files (Liu et al. 2015): `list_attr_celeba.txt`, `list_eval_partition.txt`,
//! `identity_CelebA.txt` and the optional 5-point `list_landmarks_align_celeba.txt`.
//!
//! The readers accept CRLF or LF and any run of spaces, and check what the format promises: the
//! count line agrees with the rows, every row has its 40 values in {-1, 1}, names are unique,
//! partitions are 0/1/2, and the files agree on which images exist. Errors name file and line.

use std::collections::HashMap;
use std::path::Path;

use crate::attrs::{attr_index, N_ATTRS};
use crate::dataset::{Dataset, DatasetKind, Sample, Split};
use crate::landmarks::LandmarkTable;
use crate::text::TextFile;
use crate::{Error, Result};

/// The attribute file's name in a CelebA root.
pub const ATTR_FILE: &str = "list_attr_celeba.txt";
/// The partition file's name in a CelebA root.
pub const PARTITION_FILE: &str = "list_eval_partition.txt";
/// The identity file's name in a CelebA root (optional).
pub const IDENTITY_FILE: &str = "identity_CelebA.txt";
/// The official 5-point landmark file's name in a CelebA root (optional).
pub const LANDMARKS_ALIGN_FILE: &str = "list_landmarks_align_celeba.txt";
/// The aligned-image folder in a CelebA root.
pub const IMAGE_DIR: &str = "img_align_celeba";

/// Reads a CelebA root: the attribute and partition files (required), identities (optional).
/// Images are expected in `img_align_celeba/`; they are not opened here.
pub fn open(root: &Path) -> Result<Dataset> {
    let attr_path = root.join(ATTR_FILE);
    let attrs = read_attributes(&attr_path)?;
    let partition_path = root.join(PARTITION_FILE);
    let partitions = read_name_values(&partition_path, "partition", |v| match v {
        "0" => Some(Split::Train),
        "1" => Some(Split::Val),
        "2" => Some(Split::Test),
        _ => None,
    })?;
    let identity_path = root.join(IDENTITY_FILE);
    let identities = if identity_path.is_file() {
        Some(read_name_values(&identity_path, "identity", |v| v.parse::<u32>().ok())?)
    } else {
        None
    };

    let split_of = index_by_name(&partitions);
    let identity_of = identities.as_ref().map(|ids| index_by_name(ids));
    let mut samples = Vec::with_capacity(attrs.len());
    for (name, labels) in attrs {
        let split = *split_of.get(name.as_str()).ok_or_else(|| {
            Error::invalid(&partition_path, format!("has no partition for `{name}` (listed in {ATTR_FILE})"))
        })?;
        let identity = match &identity_of {
            Some(map) => Some(*map.get(name.as_str()).ok_or_else(|| {
                Error::invalid(&identity_path, format!("has no identity for `{name}` (listed in {ATTR_FILE})"))
            })?),
            None => None,
        };
        samples.push(Sample { name, split, labels, identity, landmarks: None });
    }
    if partitions.len() != samples.len() {
        return Err(Error::invalid(&partition_path, format!(
            "lists {} images but {ATTR_FILE} lists {}", partitions.len(), samples.len()
        )));
    }
    Ok(Dataset {
        kind: DatasetKind::CelebA,
        root: root.to_path_buf(),
        image_dir: root.join(IMAGE_DIR),
        label_file: attr_path,
        samples,
        n_points: None,
    })
}

fn index_by_name<T: Copy>(rows: &[(String, T)]) -> HashMap<&str, T> {
    rows.iter().map(|(n, v)| (n.as_str(), *v)).collect()
}

/// Parses `list_attr_celeba.txt`: a count line, a header of the 40 attribute names (any order,
/// mapped to CelebA's), then `name v1 … v40` rows with values in {-1, 1}.
pub fn read_attributes(path: &Path) -> Result<Vec<(String, [i8; N_ATTRS])>> {
    let file = TextFile::read(path)?;
    let mut lines = file.lines();
    let count = read_count_line(&file, lines.next())?;
    let (header_no, header) = lines.next().ok_or_else(|| file.err(2, "missing the header line of attribute names"))?;
    let columns = header_columns(&file, header_no, header)?;

    let mut rows = Vec::with_capacity(count);
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(count);
    for (line_no, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let name = fields.next().unwrap_or_default();
        let mut labels = [0i8; N_ATTRS];
        let mut n_values = 0;
        for (col, field) in fields.enumerate() {
            n_values += 1;
            if col >= N_ATTRS {
                continue;
            }
            labels[columns[col]] = match field {
                "1" => 1,
                "-1" => -1,
                v => return Err(file.err(line_no, format!(
                    "`{name}`: value `{v}` for {} is not -1 or 1", crate::CELEBA_ATTRIBUTES[columns[col]]
                ))),
            };
        }
        if n_values != N_ATTRS {
            return Err(file.err(line_no, format!("`{name}`: expected {N_ATTRS} values, found {n_values}")));
        }
        check_unique(&file, &mut seen, name, line_no)?;
        rows.push((name.to_string(), labels));
    }
    if rows.len() != count {
        return Err(file.err(1, format!("count line says {count} images but the file has {} rows", rows.len())));
    }
    Ok(rows)
}

/// Maps each header column to its CelebA attribute index.
fn header_columns(file: &TextFile, line_no: usize, header: &str) -> Result<Vec<usize>> {
    let names: Vec<&str> = header.split_whitespace().collect();
    if names.len() != N_ATTRS {
        return Err(file.err(line_no, format!("header has {} attribute names, expected {N_ATTRS}", names.len())));
    }
    let mut columns = Vec::with_capacity(N_ATTRS);
    for (col, name) in names.iter().enumerate() {
        let idx = attr_index(name).ok_or_else(|| file.err(line_no, format!("unknown attribute `{name}` in header")))?;
        if columns.contains(&idx) {
            return Err(file.err(line_no, format!("attribute `{name}` appears twice in header (column {})", col + 1)));
        }
        columns.push(idx);
    }
    Ok(columns)
}

fn read_count_line(file: &TextFile, line: Option<(usize, &str)>) -> Result<usize> {
    let (_, text) = line.ok_or_else(|| file.err(1, "empty file (expected the image count)"))?;
    let count: usize = text.trim().parse().map_err(|_| file.err(1, format!("expected the image count, found `{}`", text.trim())))?;
    // Checked before anything is sized by it: a count of 10^19 must not reserve memory (fuzzing).
    let rows = file.non_blank_lines().count().saturating_sub(2);
    if count > rows {
        return Err(file.err(1, format!("count line says {count} images but the file has {rows} rows")));
    }
    Ok(count)
}

fn check_unique(file: &TextFile, seen: &mut HashMap<String, usize>, name: &str, line_no: usize) -> Result<()> {
    if let Some(first) = seen.insert(name.to_string(), line_no) {
        return Err(file.err(line_no, format!("duplicate image `{name}` (first on line {first})")));
    }
    Ok(())
}

/// Parses a two-column `name value` file (partition, identity); `what` names the value in errors
/// and `parse` returns `None` for an invalid value.
fn read_name_values<T>(path: &Path, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<(String, T)>> {
    let file = TextFile::read(path)?;
    let mut rows = Vec::new();
    let mut seen = HashMap::new();
    for (line_no, line) in file.non_blank_lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, value] = fields[..] else {
            return Err(file.err(line_no, format!("expected `image {what}`, found {} fields", fields.len())));
        };
        let value = parse(value).ok_or_else(|| file.err(line_no, format!("`{name}`: invalid {what} `{value}`")))?;
        check_unique(&file, &mut seen, name, line_no)?;
        rows.push((name.to_string(), value));
    }
    Ok(rows)
}

/// Parses the official 5-point `list_landmarks_align_celeba.txt` (count line, header of 10
/// coordinate names, `name x y × 5` rows) into a table with 5 points per face.
pub fn read_landmarks_align(path: &Path) -> Result<LandmarkTable> {
    let file = TextFile::read(path)?;
    let mut lines = file.lines();
    let count = read_count_line(&file, lines.next())?;
    let (header_no, header) = lines.next().ok_or_else(|| file.err(2, "missing the header line"))?;
    let n_cols = header.split_whitespace().count();
    if n_cols != 10 {
        return Err(file.err(header_no, format!("header has {n_cols} columns, expected 10 (5 points × x, y)")));
    }
    let mut table = LandmarkTable::new(5);
    let mut line_of_row = Vec::new();
    for (line_no, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let name = fields.next().unwrap_or_default();
        let coords = fields
            .map(|f| f.parse::<f32>().map_err(|_| file.err(line_no, format!("`{name}`: `{f}` is not a number"))))
            .collect::<Result<Vec<f32>>>()?;
        if coords.len() != 10 {
            return Err(file.err(line_no, format!("`{name}`: expected 10 coordinates, found {}", coords.len())));
        }
        table.insert(name, coords).map_err(|row| {
            file.err(line_no, format!("duplicate image `{name}` (first on line {})", line_of_row[row]))
        })?;
        line_of_row.push(line_no);
    }
    if table.len() != count {
        return Err(file.err(1, format!("count line says {count} images but the file has {} rows", table.len())));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CELEBA_ATTRIBUTES;

    fn header() -> String {
        CELEBA_ATTRIBUTES.join(" ")
    }

    fn row(name: &str, v: i8) -> String {
        let vals: Vec<String> = (0..N_ATTRS).map(|i| if i == 0 { v.to_string() } else { "-1".into() }).collect();
        format!("{name} {}", vals.join("  "))
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn attr_err(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), ATTR_FILE, text);
        read_attributes(&p).unwrap_err().to_string().rsplit_once(ATTR_FILE).unwrap().1.to_string()
    }

    #[test]
    fn reads_crlf_and_padding() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("2\r\n{}\r\n{}\r\n{}\r\n", header(), row("1.jpg", 1), row("2.jpg", -1));
        let p = write(dir.path(), ATTR_FILE, &text);
        let rows = read_attributes(&p).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, "1.jpg");
        assert_eq!(rows[0].1[0], 1);
        assert_eq!(rows[1].1[0], -1);
        assert!(rows.iter().all(|(_, l)| l[1..].iter().all(|&v| v == -1)));
    }

    #[test]
    fn reordered_header_maps_to_celeba_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut names: Vec<&str> = CELEBA_ATTRIBUTES.to_vec();
        names.swap(0, 39); // Young first, 5_o_Clock_Shadow last
        let text = format!("1\n{}\n{}\n", names.join(" "), row("1.jpg", 1));
        let p = write(dir.path(), ATTR_FILE, &text);
        let rows = read_attributes(&p).unwrap();
        assert_eq!(rows[0].1[39], 1, "the first column is Young");
        assert_eq!(rows[0].1[0], -1);
    }

    #[test]
    fn short_row() {
        let text = format!("1\n{}\n1.jpg 1 -1\n", header());
        assert_eq!(attr_err(&text), ":3: `1.jpg`: expected 40 values, found 2");
    }

    #[test]
    fn value_two() {
        let text = format!("1\n{}\n{}\n", header(), row("1.jpg", 2));
        assert_eq!(attr_err(&text), ":3: `1.jpg`: value `2` for 5_o_Clock_Shadow is not -1 or 1");
    }

    #[test]
    fn duplicate_name() {
        let text = format!("2\n{}\n{}\n{}\n", header(), row("1.jpg", 1), row("1.jpg", 1));
        assert_eq!(attr_err(&text), ":4: duplicate image `1.jpg` (first on line 3)");
    }

    #[test]
    fn unknown_attribute() {
        let text = format!("1\n{}\n{}\n", header().replace("Bald", "Balding"), row("1.jpg", 1));
        assert_eq!(attr_err(&text), ":2: unknown attribute `Balding` in header");
    }

    #[test]
    fn wrong_header() {
        let text = format!("1\nimage {}\n{}\n", header(), row("1.jpg", 1));
        assert_eq!(attr_err(&text), ":2: header has 41 attribute names, expected 40");
    }

    #[test]
    fn a_huge_count_is_refused_before_it_reserves_memory() {
        // Found by `cargo xtask fuzz celeba_attributes` / `celeba_root`: the count sized the row
        // vector, so 9999000000000980 aborted with "capacity overflow" and 40040400 took 2 GB.
        let header = crate::CELEBA_ATTRIBUTES.join(" ");
        for count in ["40040400", "9999000000000980"] {
            let text = format!("{count}\n{header}\n");
            assert_eq!(attr_err(&text), format!(":1: count line says {count} images but the file has 0 rows"));
        }
    }

    #[test]
    fn count_mismatch() {
        let text = format!("3\n{}\n{}\n", header(), row("1.jpg", 1));
        assert_eq!(attr_err(&text), ":1: count line says 3 images but the file has 1 rows");
        assert_eq!(attr_err("two\n"), ":1: expected the image count, found `two`");
    }

    #[test]
    fn partition_checks() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), ATTR_FILE, &format!("2\n{}\n{}\n{}\n", header(), row("1.jpg", 1), row("2.jpg", 1)));
        write(dir.path(), PARTITION_FILE, "1.jpg 0\n2.jpg 3\n");
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("list_eval_partition.txt:2: `2.jpg`: invalid partition `3`"), "{err}");
        write(dir.path(), PARTITION_FILE, "1.jpg 0\n");
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("list_eval_partition.txt: has no partition for `2.jpg` (listed in list_attr_celeba.txt)"), "{err}");
        write(dir.path(), PARTITION_FILE, "1.jpg 0\n2.jpg 2\n");
        write(dir.path(), IDENTITY_FILE, "1.jpg 7\n2.jpg 9\n");
        let ds = open(dir.path()).unwrap();
        assert_eq!(ds.samples[1].split, Split::Test);
        assert_eq!(ds.samples[1].identity, Some(9));
    }

    #[test]
    fn landmarks_align() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            LANDMARKS_ALIGN_FILE,
            "1\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n000001.jpg 69  109  106  113   77  142   73  152  108  154\n",
        );
        let t = read_landmarks_align(&p).unwrap();
        assert_eq!(t.get("000001.jpg").unwrap()[..4], [69.0, 109.0, 106.0, 113.0]);
        let p = write(dir.path(), "bad.txt", "1\na b c d e f g h i j\n000001.jpg 69 109\n");
        let err = read_landmarks_align(&p).unwrap_err().to_string();
        assert!(err.ends_with("bad.txt:3: `000001.jpg`: expected 10 coordinates, found 2"), "{err}");
    }
}
