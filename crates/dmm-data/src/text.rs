//! Line-oriented reading shared by the label-file parsers: the whole file is read once, lines are
//! numbered from 1, `\r\n` and `\n` are both accepted and fields are split on any run of spaces.

use std::path::Path;

use crate::{Error, Result};

/// A text file held in memory with its path, for numbered, error-reporting iteration.
pub(crate) struct TextFile {
    pub path: std::path::PathBuf,
    text: String,
}

impl TextFile {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            // Report the line of the first invalid byte.
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            Error::parse(path, line, "not valid UTF-8 text")
        })?;
        Ok(Self { path: path.to_path_buf(), text })
    }

    /// `(line_number, line)` pairs with line ends removed; a final empty line is not yielded.
    pub fn lines(&self) -> impl Iterator<Item = (usize, &str)> {
        self.text.lines().enumerate().map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
    }

    /// Numbered lines that are not blank.
    pub fn non_blank_lines(&self) -> impl Iterator<Item = (usize, &str)> {
        self.lines().filter(|(_, l)| !l.trim().is_empty())
    }

    pub fn err(&self, line: usize, msg: impl Into<String>) -> Error {
        Error::parse(&self.path, line, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_and_lf_give_the_same_lines() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let b = dir.path().join("b.txt");
        std::fs::write(&a, "x 1\r\ny  2\r\n").unwrap();
        std::fs::write(&b, "x 1\ny  2\n").unwrap();
        let la: Vec<_> = TextFile::read(&a).unwrap().lines().map(|(n, l)| (n, l.to_string())).collect();
        let lb: Vec<_> = TextFile::read(&b).unwrap().lines().map(|(n, l)| (n, l.to_string())).collect();
        assert_eq!(la, lb);
        assert_eq!(la, vec![(1, "x 1".to_string()), (2, "y  2".to_string())]);
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        std::fs::write(&a, b"ok\nok\n\xff\n").unwrap();
        let err = TextFile::read(&a).err().unwrap().to_string();
        assert!(err.ends_with("a.txt:3: not valid UTF-8 text"), "{err}");
    }
}
