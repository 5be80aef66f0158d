//! LFWA (Liu et al. 2015): LFW images with the 40 CelebA attributes and the official train/test
//! split. LFWA has no validation split.
//!
//! Two layouts are read from a root holding the images under `lfw/<Person>/<Person>_NNNN.jpg`:
//! - the official files: `name.txt` (Windows `\` separators), `label.txt` (40 × 0/1 per line, CelebA
//!   order) and `indices_train_test.mat` (MATLAB 7.3 = HDF5, 1-based `indices_img_train` and
//!   `indices_img_test`); reading the `.mat` needs the `mat` feature (system HDF5);
//! - the text form `lfwa_40attr_with_split.txt`: `#` comments, a header `image split <40 names>`,
//!   then `name train|test 40×(0/1)` rows.
//!
//! With the `mat` feature and the official files present, those are used; otherwise the text form.

use std::collections::HashMap;
use std::path::Path;

use crate::attrs::{attr_index, N_ATTRS};
use crate::dataset::{Dataset, DatasetKind, Sample, Split};
use crate::text::TextFile;
use crate::{Error, Result};

/// Image list of the official release.
pub const NAME_FILE: &str = "name.txt";
/// Labels of the official release.
pub const LABEL_FILE: &str = "label.txt";
/// The official split (MATLAB 7.3).
pub const MAT_SPLIT_FILE: &str = "indices_train_test.mat";
/// The split and labels as one text file.
pub const TEXT_SPLIT_FILE: &str = "lfwa_40attr_with_split.txt";
/// The image folder in an LFWA root.
pub const IMAGE_DIR: &str = "lfw";

/// Reads an LFWA root (see the module docs for which files are used).
pub fn open(root: &Path) -> Result<Dataset> {
    let mat = root.join(MAT_SPLIT_FILE);
    let text = root.join(TEXT_SPLIT_FILE);
    let official = mat.is_file() && root.join(NAME_FILE).is_file() && root.join(LABEL_FILE).is_file();
    let (samples, label_file) = if official && cfg!(feature = "mat") {
        (read_official(root)?, root.join(LABEL_FILE))
    } else if text.is_file() {
        (read_text_split(&text)?, text)
    } else if official {
        return Err(Error::invalid(&mat, format!(
            "reading the MATLAB split needs dmm built with the `mat` feature (system HDF5); \
             or provide {TEXT_SPLIT_FILE}"
        )));
    } else {
        return Err(Error::invalid(root, format!(
            "not an LFWA root: expected {TEXT_SPLIT_FILE}, or {NAME_FILE} + {LABEL_FILE} + {MAT_SPLIT_FILE}"
        )));
    };
    Ok(Dataset {
        kind: DatasetKind::Lfwa,
        root: root.to_path_buf(),
        image_dir: root.join(IMAGE_DIR),
        label_file,
        samples,
        n_points: None,
    })
}

fn sample(name: &str, split: Split, labels: [i8; N_ATTRS]) -> Sample {
    Sample { name: name.replace('\\', "/"), split, labels, identity: None, landmarks: None }
}

/// Parses 40 0/1 values separated by commas and/or spaces into ±1 labels.
fn parse_01<'a>(file: &TextFile, line_no: usize, name: &str, fields: impl Iterator<Item = &'a str>) -> Result<[i8; N_ATTRS]> {
    let mut labels = [0i8; N_ATTRS];
    let mut n = 0;
    for field in fields.filter(|f| !f.is_empty()) {
        if n < N_ATTRS {
            labels[n] = match field {
                "1" => 1,
                "0" => -1,
                v => return Err(file.err(line_no, format!(
                    "`{name}`: value `{v}` for {} is not 0 or 1", crate::CELEBA_ATTRIBUTES[n]
                ))),
            };
        }
        n += 1;
    }
    if n != N_ATTRS {
        return Err(file.err(line_no, format!("`{name}`: expected {N_ATTRS} values, found {n}")));
    }
    Ok(labels)
}

/// Reads `name.txt` and `label.txt`: one image per line, in the same order.
pub fn read_names_and_labels(root: &Path) -> Result<Vec<(String, [i8; N_ATTRS])>> {
    let names = TextFile::read(&root.join(NAME_FILE))?;
    let labels = TextFile::read(&root.join(LABEL_FILE))?;
    let names: Vec<(usize, &str)> = names.non_blank_lines().map(|(n, l)| (n, l.trim())).collect();
    let label_lines: Vec<(usize, &str)> = labels.non_blank_lines().collect();
    if names.len() != label_lines.len() {
        return Err(Error::invalid(&labels.path, format!(
            "has {} rows but {NAME_FILE} has {}", label_lines.len(), names.len()
        )));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rows = Vec::with_capacity(names.len());
    for (&(name_line, name), &(label_line, text)) in names.iter().zip(&label_lines) {
        if let Some(first) = seen.insert(name, name_line) {
            return Err(Error::parse(root.join(NAME_FILE), name_line, format!("duplicate image `{name}` (first on line {first})")));
        }
        let l = parse_01(&labels, label_line, name, text.split([',', ' ', '\t']))?;
        rows.push((name.to_string(), l));
    }
    Ok(rows)
}

/// Reads the official layout: names, labels and the `.mat` split.
#[cfg(feature = "mat")]
pub fn read_official(root: &Path) -> Result<Vec<Sample>> {
    let rows = read_names_and_labels(root)?;
    let mat = root.join(MAT_SPLIT_FILE);
    let (train, test) = read_mat_split(&mat)?;
    let mut split: Vec<Option<Split>> = vec![None; rows.len()];
    for (indices, s, var) in [(train, Split::Train, "indices_img_train"), (test, Split::Test, "indices_img_test")] {
        for idx in indices {
            let slot = idx.checked_sub(1).and_then(|i| split.get_mut(i)).ok_or_else(|| {
                Error::invalid(&mat, format!("{var}: index {idx} is outside 1..={} ({NAME_FILE} rows)", rows.len()))
            })?;
            if slot.replace(s).is_some() {
                return Err(Error::invalid(&mat, format!("{var}: image index {idx} appears twice or in both splits")));
            }
        }
    }
    Ok(rows
        .into_iter()
        .zip(split)
        .filter_map(|((name, labels), s)| s.map(|s| sample(&name, s, labels)))
        .collect())
}

#[cfg(not(feature = "mat"))]
fn read_official(_root: &Path) -> Result<Vec<Sample>> {
    unreachable!("open() checks cfg!(feature = \"mat\") first")
}

/// Reads the 1-based `indices_img_train` and `indices_img_test` vectors of the official `.mat`.
#[cfg(feature = "mat")]
pub fn read_mat_split(path: &Path) -> Result<(Vec<usize>, Vec<usize>)> {
    let mat_err = |cause| Error::Mat { path: path.to_path_buf(), cause };
    let file = hdf5::File::open(path).map_err(mat_err)?;
    let read = |var: &str| -> Result<Vec<usize>> {
        let values: Vec<f64> = file.dataset(var).and_then(|d| d.read_raw::<f64>()).map_err(mat_err)?;
        values
            .into_iter()
            .map(|v| {
                if v >= 1.0 && v.fract() == 0.0 && v < u32::MAX as f64 {
                    Ok(v as usize)
                } else {
                    Err(Error::invalid(path, format!("{var}: `{v}` is not a 1-based index")))
                }
            })
            .collect()
    };
    Ok((read("indices_img_train")?, read("indices_img_test")?))
}

/// Reads the text form `lfwa_40attr_with_split.txt`.
pub fn read_text_split(path: &Path) -> Result<Vec<Sample>> {
    let file = TextFile::read(path)?;
    let mut lines = file.non_blank_lines().filter(|(_, l)| !l.trim_start().starts_with('#'));
    let (header_no, header) = lines.next().ok_or_else(|| file.err(1, "empty file (expected the header `image split …`)"))?;
    let columns: Vec<&str> = header.split_whitespace().collect();
    if columns.len() != 2 + N_ATTRS || columns[0] != "image" || columns[1] != "split" {
        return Err(file.err(header_no, format!(
            "header must be `image split` and the {N_ATTRS} attribute names, found {} columns", columns.len()
        )));
    }
    let mut order = Vec::with_capacity(N_ATTRS);
    for name in &columns[2..] {
        let idx = attr_index(name).ok_or_else(|| file.err(header_no, format!("unknown attribute `{name}` in header")))?;
        if order.contains(&idx) {
            return Err(file.err(header_no, format!("attribute `{name}` appears twice in header")));
        }
        order.push(idx);
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut samples = Vec::new();
    for (line_no, line) in lines {
        let mut fields = line.split_whitespace();
        let name = fields.next().unwrap_or_default();
        let split = match fields.next() {
            Some("train") => Split::Train,
            Some("test") => Split::Test,
            other => return Err(file.err(line_no, format!(
                "`{name}`: split must be train or test, found `{}`", other.unwrap_or("")
            ))),
        };
        let by_column = parse_01(&file, line_no, name, fields)?;
        let mut labels = [0i8; N_ATTRS];
        for (col, &idx) in order.iter().enumerate() {
            labels[idx] = by_column[col];
        }
        if let Some(first) = seen.insert(name, line_no) {
            return Err(file.err(line_no, format!("duplicate image `{name}` (first on line {first})")));
        }
        samples.push(sample(name, split, labels));
    }
    Ok(samples)
}

/// Renders samples in the text form [`TEXT_SPLIT_FILE`] (read back by [`read_text_split`]):
/// what a default build (no HDF5) reads after the official `.mat` split was converted once.
pub fn text_split(samples: &[Sample]) -> String {
    let mut out = String::from("# LFWA: name.txt + label.txt (0/1, CelebA order) + the split of indices_train_test.mat, written by `dmm dataset text-split`\n");
    out.push_str("image split ");
    out.push_str(&crate::CELEBA_ATTRIBUTES.join(" "));
    out.push('\n');
    for s in samples {
        out.push_str(&s.name);
        out.push(' ');
        out.push_str(s.split.as_str());
        for &l in &s.labels {
            out.push_str(if l > 0 { " 1" } else { " 0" });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CELEBA_ATTRIBUTES;

    fn text_err(body: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(TEXT_SPLIT_FILE);
        let text = format!("# comment\nimage split {}\n{body}", CELEBA_ATTRIBUTES.join(" "));
        std::fs::write(&p, text).unwrap();
        match read_text_split(&p) {
            Ok(s) => format!("ok {}", s.len()),
            Err(e) => e.to_string().rsplit_once(TEXT_SPLIT_FILE).unwrap().1.to_string(),
        }
    }

    fn zeros(first: &str) -> String {
        std::iter::once(first).chain(std::iter::repeat_n("0", 39)).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn text_split_rows() {
        assert_eq!(text_err(&format!("A/A_0001.jpg train {}\nB/B_0001.jpg test {}\n", zeros("1"), zeros("0"))), "ok 2");
        assert_eq!(text_err(&format!("A/A_0001.jpg val {}\n", zeros("1"))), ":3: `A/A_0001.jpg`: split must be train or test, found `val`");
        assert_eq!(text_err(&format!("A/A_0001.jpg train {}\n", zeros("2"))), ":3: `A/A_0001.jpg`: value `2` for 5_o_Clock_Shadow is not 0 or 1");
        assert_eq!(text_err("A/A_0001.jpg train 1 0\n"), ":3: `A/A_0001.jpg`: expected 40 values, found 2");
        let row = format!("A/A_0001.jpg train {}\n", zeros("1"));
        assert_eq!(text_err(&format!("{row}{row}")), ":4: duplicate image `A/A_0001.jpg` (first on line 3)");
    }

    #[test]
    fn names_and_labels_convert_backslashes_and_zero_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NAME_FILE), "A\\A_0001.jpg\nB\\B_0001.jpg\n").unwrap();
        std::fs::write(dir.path().join(LABEL_FILE), format!("{}\n{}\n", zeros("1").replace(' ', ","), zeros("0").replace(' ', ","))).unwrap();
        let rows = read_names_and_labels(dir.path()).unwrap();
        assert_eq!(rows[0].1[0], 1);
        assert_eq!(rows[1].1[0], -1);
        assert_eq!(sample(&rows[0].0, Split::Train, rows[0].1).name, "A/A_0001.jpg");
        std::fs::write(dir.path().join(LABEL_FILE), format!("{}\n", zeros("1"))).unwrap();
        let err = read_names_and_labels(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("label.txt: has 1 rows but name.txt has 2"), "{err}");
    }

    #[test]
    fn text_split_round_trips() {
        let mut a = [-1i8; N_ATTRS];
        a[0] = 1;
        a[39] = 1;
        let samples = vec![sample("A/A_0001.jpg", Split::Train, a), sample("B/B_0002.jpg", Split::Test, [-1; N_ATTRS])];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(TEXT_SPLIT_FILE);
        std::fs::write(&p, text_split(&samples)).unwrap();
        assert_eq!(read_text_split(&p).unwrap(), samples);
    }

    #[test]
    fn not_an_lfwa_root() {
        let dir = tempfile::tempdir().unwrap();
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not an LFWA root"), "{err}");
    }
}
