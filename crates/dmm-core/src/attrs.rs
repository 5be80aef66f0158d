//! The 40 CelebA attributes and their split into objective and subjective groups (paper §3.2.1).
//!
//! The paper's Fig. 3 with its grouping is missing, so the split is a data file
//! (`data/attribute_groups.txt`, the default compiled in) that users can replace. Outputs are always
//! reported in CelebA's order; a grouping only says which head predicts which attribute.

use std::path::{Path, PathBuf};

/// A grouping file that cannot be used, naming the file (and the line, where there is one).
#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    /// The file cannot be read.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A line is wrong.
    #[error("{}:{line}: {msg}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// The file as a whole is wrong.
    #[error("{}: {msg}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

type Result<T> = std::result::Result<T, GroupsError>;

impl GroupsError {
    fn parse(path: &Path, line: usize, msg: String) -> Self {
        GroupsError::Parse { path: path.to_path_buf(), line, msg }
    }

    fn invalid(path: &Path, msg: impl Into<String>) -> Self {
        GroupsError::Invalid { path: path.to_path_buf(), msg: msg.into() }
    }
}

/// Number of attributes (CelebA's and LFWA's 40).
pub const N_ATTRS: usize = 40;

/// CelebA's attribute names, in the order of `list_attr_celeba.txt`.
pub const CELEBA_ATTRIBUTES: [&str; N_ATTRS] = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
];

/// The position of an attribute name in CelebA's order.
pub fn attr_index(name: &str) -> Option<usize> {
    CELEBA_ATTRIBUTES.iter().position(|&a| a == name)
}

const DEFAULT_GROUPS: &str = include_str!("../../../data/attribute_groups.txt");

/// Which attributes the objective and which the subjective branch predicts. Each of the 40 is in
/// exactly one group; indices are in CelebA order and sorted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttributeGroups {
    /// CelebA indices of the objective attributes.
    pub objective: Vec<usize>,
    /// CelebA indices of the subjective attributes.
    pub subjective: Vec<usize>,
}

impl Default for AttributeGroups {
    /// The project's 22 + 18 split (DESIGN.md).
    fn default() -> Self {
        parse_groups(Path::new("data/attribute_groups.txt"), DEFAULT_GROUPS)
            .expect("the bundled attribute_groups.txt is valid (checked by a test)")
    }
}

impl AttributeGroups {
    /// Reads a grouping file: `objective:` and `subjective:` section headers, then one attribute
    /// name per line; `#` starts a comment.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|cause| GroupsError::Io { path: path.to_path_buf(), cause })?;
        parse_groups(path, text.strip_prefix('\u{feff}').unwrap_or(&text))
    }
}

fn parse_groups(path: &Path, text: &str) -> Result<AttributeGroups> {
    let mut objective = Vec::new();
    let mut subjective = Vec::new();
    let mut seen: [Option<usize>; N_ATTRS] = [None; N_ATTRS];
    let mut current: Option<&mut Vec<usize>> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match line {
            "objective:" => current = Some(&mut objective),
            "subjective:" => current = Some(&mut subjective),
            name => {
                let Some(group) = current.as_deref_mut() else {
                    return Err(GroupsError::parse(path, line_no, format!(
                        "attribute `{name}` before any `objective:` or `subjective:` header"
                    )));
                };
                let idx = attr_index(name).ok_or_else(|| {
                    GroupsError::parse(path, line_no, format!("unknown attribute `{name}`"))
                })?;
                if let Some(first) = seen[idx] {
                    return Err(GroupsError::parse(path, line_no, format!(
                        "attribute `{name}` is already grouped on line {first}"
                    )));
                }
                seen[idx] = Some(line_no);
                group.push(idx);
            }
        }
    }
    let missing: Vec<&str> =
        (0..N_ATTRS).filter(|&i| seen[i].is_none()).map(|i| CELEBA_ATTRIBUTES[i]).collect();
    if !missing.is_empty() {
        return Err(GroupsError::invalid(path, format!("attributes in no group: {}", missing.join(", "))));
    }
    if objective.is_empty() || subjective.is_empty() {
        return Err(GroupsError::invalid(path, "both groups need at least one attribute"));
    }
    objective.sort_unstable();
    subjective.sort_unstable();
    Ok(AttributeGroups { objective, subjective })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(text: &str, expected: &str) {
        let err = parse_groups(Path::new("g.txt"), text).unwrap_err().to_string();
        assert_eq!(err, expected);
    }

    #[test]
    fn default_grouping_is_the_design_split() {
        let g = AttributeGroups::default();
        assert_eq!((g.objective.len(), g.subjective.len()), (22, 18));
        let name = |i: usize| CELEBA_ATTRIBUTES[i];
        assert!(g.objective.iter().any(|&i| name(i) == "Male"));
        assert!(g.subjective.iter().any(|&i| name(i) == "Young"));
        assert!(g.subjective.iter().any(|&i| name(i) == "Smiling"));
    }

    #[test]
    fn unknown_attribute_is_named() {
        check_err("objective:\nBald\nBlue_Hair\n", "g.txt:3: unknown attribute `Blue_Hair`");
    }

    #[test]
    fn duplicate_attribute_points_at_first() {
        check_err(
            "objective:\nBald\nsubjective:\nBald\n",
            "g.txt:4: attribute `Bald` is already grouped on line 2",
        );
    }

    #[test]
    fn name_before_header() {
        check_err("Bald\n", "g.txt:1: attribute `Bald` before any `objective:` or `subjective:` header");
    }

    #[test]
    fn missing_attributes_are_listed() {
        let mut text = "objective:\n".to_string();
        for a in &CELEBA_ATTRIBUTES[..39] {
            text.push_str(a);
            text.push('\n');
        }
        check_err(&text, "g.txt: attributes in no group: Young");
    }
}
