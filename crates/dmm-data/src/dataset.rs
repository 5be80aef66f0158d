//! The dataset model shared by CelebA and LFWA: a list of [`Sample`]s (image name, split, ±1
//! labels in CelebA order, optional landmarks) under one image folder.
//!
//! Datasets list what the label files list. Whether each image is on disk is a separate question,
//! answered by [`Dataset::presence`] and acted on by [`Dataset::retain_present`]: users download
//! subsets, so a partial folder is normal unless they ask for strict mode.

use std::path::{Path, PathBuf};

use crate::attrs::N_ATTRS;
use crate::landmarks::LandmarkTable;
use crate::{Error, Result};

/// File name of the per-image landmark CSV that [`Dataset::open`] attaches when it is present in
/// the dataset root (written by `dmm landmarks`).
pub const LANDMARKS_CSV: &str = "landmarks.csv";

/// A data split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training images (CelebA partition 0, LFWA `indices_img_train`).
    Train,
    /// Validation images (CelebA partition 1; LFWA has none).
    Val,
    /// Test images (CelebA partition 2, LFWA `indices_img_test`).
    Test,
}

impl Split {
    /// All splits in file order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// `"train"`, `"val"` or `"test"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(format!("unknown split `{s}` (expected train, val or test)")),
        }
    }
}

/// Which dataset a [`Dataset`] was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// CelebA (Liu et al. 2015), aligned 178×218 crops.
    CelebA,
    /// LFWA: LFW images with the 40 CelebA attributes.
    Lfwa,
}

impl DatasetKind {
    /// `"celeba"` or `"lfwa"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::CelebA => "celeba",
            DatasetKind::Lfwa => "lfwa",
        }
    }
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Path relative to the dataset's image folder, with `/` separators (the landmark CSV key).
    pub name: String,
    /// The split it belongs to.
    pub split: Split,
    /// Labels in CelebA order, `+1` (has the attribute) or `-1`.
    pub labels: [i8; N_ATTRS],
    /// Person identity when the dataset provides one (CelebA `identity_CelebA.txt`).
    pub identity: Option<u32>,
    /// Landmarks in pixel coordinates of the stored image, `[x0, y0, x1, y1, …]`, when known.
    pub landmarks: Option<Vec<f32>>,
}

/// Listed and present image counts of one split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SplitCount {
    /// Images the label files list for the split.
    pub listed: usize,
    /// Of those, images found in the image folder.
    pub present: usize,
}

/// What of a dataset is on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// Counts per split, in [`Split::ALL`] order, for the splits the dataset has.
    pub splits: Vec<(Split, SplitCount)>,
    /// Listed images that are absent, in list order.
    pub missing: Vec<PathBuf>,
}

/// A labelled dataset: samples in list order plus where their images live.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// CelebA or LFWA.
    pub kind: DatasetKind,
    /// The dataset root given by the user.
    pub root: PathBuf,
    /// The folder sample names are relative to.
    pub image_dir: PathBuf,
    /// The label file that lists the samples (named in missing-image errors).
    pub label_file: PathBuf,
    /// The samples, in the order of the label file.
    pub samples: Vec<Sample>,
    /// Points per face of the attached landmarks, if any were attached.
    pub n_points: Option<usize>,
}

impl Dataset {
    /// Reads a dataset root in the layout of `kind` (see [`crate::celeba::open`] and
    /// [`crate::lfwa::open`]) and attaches `landmarks.csv` from the root if it exists.
    pub fn open(kind: DatasetKind, root: &Path) -> Result<Self> {
        let mut ds = match kind {
            DatasetKind::CelebA => crate::celeba::open(root)?,
            DatasetKind::Lfwa => crate::lfwa::open(root)?,
        };
        let csv = root.join(LANDMARKS_CSV);
        if csv.is_file() {
            let table = LandmarkTable::read(&csv)?;
            ds.attach_landmarks(&table);
        }
        Ok(ds)
    }

    /// The splits this dataset has (LFWA has no validation split).
    pub fn splits(&self) -> Vec<Split> {
        Split::ALL.into_iter().filter(|s| self.samples.iter().any(|x| x.split == *s)).collect()
    }

    /// Full path of a sample's image.
    pub fn image_path(&self, sample: &Sample) -> PathBuf {
        self.image_dir.join(&sample.name)
    }

    /// Samples of one split, in list order.
    pub fn split(&self, split: Split) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.split == split)
    }

    /// Counts listed and present images per split (one `stat` per listed image).
    pub fn presence(&self) -> Presence {
        let mut counts = [SplitCount::default(); 3];
        let mut missing = Vec::new();
        for s in &self.samples {
            let c = &mut counts[s.split as usize];
            c.listed += 1;
            let path = self.image_path(s);
            if path.is_file() {
                c.present += 1;
            } else {
                missing.push(path);
            }
        }
        let splits = Split::ALL
            .into_iter()
            .zip(counts)
            .filter(|(_, c)| c.listed > 0)
            .collect();
        Presence { splits, missing }
    }

    /// Drops samples whose image is absent, returning the presence counts from before. With
    /// `strict`, the first absent image is an error instead and nothing is dropped.
    pub fn retain_present(&mut self, strict: bool) -> Result<Presence> {
        let presence = self.presence();
        if let Some(first) = presence.missing.first() {
            if strict {
                return Err(Error::MissingImage {
                    path: first.clone(),
                    listed_in: self.label_file.clone(),
                });
            }
            let dir = &self.image_dir;
            self.samples.retain(|s| dir.join(&s.name).is_file());
        }
        Ok(presence)
    }

    /// Fraction of samples with each attribute, in CelebA order (0 for an empty dataset).
    pub fn positive_rates(&self) -> [f64; N_ATTRS] {
        let mut pos = [0usize; N_ATTRS];
        for s in &self.samples {
            for (p, &l) in pos.iter_mut().zip(&s.labels) {
                *p += (l > 0) as usize;
            }
        }
        let n = self.samples.len().max(1) as f64;
        pos.map(|p| p as f64 / n)
    }

    /// Per-attribute accuracy on `split` of always predicting the training split's majority label
    /// (ties go to −1): the baseline every trained model must beat. `None` when either split has
    /// no samples.
    pub fn majority_accuracies(&self, split: Split) -> Option<[f64; N_ATTRS]> {
        let train: Vec<&Sample> = self.split(Split::Train).collect();
        let eval: Vec<&Sample> = self.split(split).collect();
        if train.is_empty() || eval.is_empty() {
            return None;
        }
        Some(std::array::from_fn(|j| {
            let positive_majority = 2 * train.iter().filter(|s| s.labels[j] > 0).count() > train.len();
            let label = if positive_majority { 1 } else { -1 };
            eval.iter().filter(|s| s.labels[j] == label).count() as f64 / eval.len() as f64
        }))
    }

    /// Attaches landmarks by image name; returns how many samples got points. Samples not in the
    /// table keep `None` (no face found: masked out of the landmark loss).
    pub fn attach_landmarks(&mut self, table: &LandmarkTable) -> usize {
        let mut attached = 0;
        for s in &mut self.samples {
            s.landmarks = table.get(&s.name).map(<[f32]>::to_vec);
            attached += s.landmarks.is_some() as usize;
        }
        self.n_points = Some(table.n_points());
        attached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, split: Split, first: i8) -> Sample {
        let mut labels = [-1i8; N_ATTRS];
        labels[0] = first;
        Sample { name: name.into(), split, labels, identity: None, landmarks: None }
    }

    fn dataset(dir: &Path) -> Dataset {
        Dataset {
            kind: DatasetKind::CelebA,
            root: dir.to_path_buf(),
            image_dir: dir.to_path_buf(),
            label_file: dir.join("list_attr_celeba.txt"),
            samples: vec![
                sample("a.jpg", Split::Train, 1),
                sample("b.jpg", Split::Train, -1),
                sample("c.jpg", Split::Test, 1),
                sample("d.jpg", Split::Test, 1),
            ],
            n_points: None,
        }
    }

    #[test]
    fn presence_counts_per_split_and_strict_mode_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("d.jpg"), b"x").unwrap();
        let mut ds = dataset(dir.path());
        let p = ds.presence();
        assert_eq!(
            p.splits,
            vec![
                (Split::Train, SplitCount { listed: 2, present: 1 }),
                (Split::Test, SplitCount { listed: 2, present: 1 })
            ]
        );
        assert_eq!(p.missing.len(), 2);
        let err = ds.clone().retain_present(true).unwrap_err().to_string();
        assert!(err.contains("b.jpg: image listed in") && err.contains("list_attr_celeba.txt"), "{err}");
        ds.retain_present(false).unwrap();
        let names: Vec<_> = ds.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a.jpg", "d.jpg"]);
    }

    #[test]
    fn positive_rates_count_plus_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ds = dataset(dir.path());
        let r = ds.positive_rates();
        assert_eq!(r[0], 0.75);
        assert_eq!(r[1], 0.0);
        assert_eq!(ds.splits(), vec![Split::Train, Split::Test]);
    }
}
