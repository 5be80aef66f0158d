//! The seven variants of the paper's ablation (Table 1) as one enum: which attribute head the
//! network has, whether the landmark (FLD) branch is trained, and which training policies apply.
//!
//! | variant    | FLD | DW | AT | AG | attribute head                       |
//! |------------|-----|----|----|----|--------------------------------------|
//! | Baseline   |     |    |    |    | global average pool + FC 40          |
//! | DMM-FAC    |     | ✓  | ✓  | ✓  | objective SPP-1 + subjective SPP-3   |
//! | DMM-EQ-FIX | ✓   |    |    | ✓  | grouped                              |
//! | DMM-EQ-AT  | ✓   |    | ✓  | ✓  | grouped                              |
//! | DMM-DW-FIX | ✓   | ✓  |    | ✓  | grouped                              |
//! | DMM-SPP    | ✓   | ✓  | ✓  |    | all 40 through the subjective branch |
//! | DMM-CNN    | ✓   | ✓  | ✓  | ✓  | grouped                              |

use std::fmt;
use std::str::FromStr;

/// One of the seven variants of Table 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Variant {
    /// ResNet-50 with 40 outputs: no FLD, no grouping, equal weights, threshold 0.
    #[serde(rename = "baseline")]
    Baseline,
    /// The full method without the landmark task.
    #[serde(rename = "dmm-fac")]
    DmmFac,
    /// Equal loss weights and fixed threshold 0.
    #[serde(rename = "dmm-eq-fix")]
    DmmEqFix,
    /// Equal loss weights with adaptive thresholds.
    #[serde(rename = "dmm-eq-at")]
    DmmEqAt,
    /// Dynamic weights with fixed threshold 0.
    #[serde(rename = "dmm-dw-fix")]
    DmmDwFix,
    /// No attribute grouping: all attributes through the 3-level SPP branch.
    #[serde(rename = "dmm-spp")]
    DmmSpp,
    /// The proposed method.
    #[serde(rename = "dmm-cnn")]
    DmmCnn,
}

/// Which network predicts the attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeHead {
    /// Global average pooling + one FC layer to 40 outputs.
    GlobalPool,
    /// Objective branch (SPP-1, 2 FC) and subjective branch (SPP-3, 3 FC).
    Grouped,
    /// One subjective-style branch (SPP-3, 3 FC) for all 40.
    SingleSpp,
}

impl Variant {
    /// All variants in Table 1's order.
    pub const ALL: [Variant; 7] = [
        Variant::Baseline,
        Variant::DmmFac,
        Variant::DmmEqFix,
        Variant::DmmEqAt,
        Variant::DmmDwFix,
        Variant::DmmSpp,
        Variant::DmmCnn,
    ];

    /// The name used in the paper and on the command line, e.g. `DMM-CNN` / `dmm-cnn`.
    pub fn paper_name(self) -> &'static str {
        match self {
            Variant::Baseline => "Baseline",
            Variant::DmmFac => "DMM-FAC",
            Variant::DmmEqFix => "DMM-EQ-FIX",
            Variant::DmmEqAt => "DMM-EQ-AT",
            Variant::DmmDwFix => "DMM-DW-FIX",
            Variant::DmmSpp => "DMM-SPP",
            Variant::DmmCnn => "DMM-CNN",
        }
    }

    /// The attribute head of this variant.
    pub fn attribute_head(self) -> AttributeHead {
        match self {
            Variant::Baseline => AttributeHead::GlobalPool,
            Variant::DmmSpp => AttributeHead::SingleSpp,
            _ => AttributeHead::Grouped,
        }
    }

    /// Whether the landmark (FLD) branch exists and is trained.
    pub fn uses_landmarks(self) -> bool {
        !matches!(self, Variant::Baseline | Variant::DmmFac)
    }

    /// Whether training uses the dynamic loss weights (Eq. 4); otherwise all weights are 1.
    pub fn uses_dynamic_weights(self) -> bool {
        matches!(self, Variant::DmmFac | Variant::DmmDwFix | Variant::DmmSpp | Variant::DmmCnn)
    }

    /// Whether training adapts the thresholds (Eq. 6); otherwise τ = 0.
    pub fn uses_adaptive_thresholds(self) -> bool {
        matches!(self, Variant::DmmFac | Variant::DmmEqAt | Variant::DmmSpp | Variant::DmmCnn)
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.paper_name())
    }
}

impl FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Variant::ALL
            .into_iter()
            .find(|v| v.paper_name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Variant::ALL.iter().map(|v| v.paper_name().to_lowercase()).collect();
                format!("unknown variant `{s}` (expected one of {})", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_1_flags() {
        let row = |v: Variant| (v.uses_landmarks(), v.uses_dynamic_weights(), v.uses_adaptive_thresholds(), v.attribute_head() == AttributeHead::Grouped);
        assert_eq!(row(Variant::Baseline), (false, false, false, false));
        assert_eq!(row(Variant::DmmFac), (false, true, true, true));
        assert_eq!(row(Variant::DmmEqFix), (true, false, false, true));
        assert_eq!(row(Variant::DmmEqAt), (true, false, true, true));
        assert_eq!(row(Variant::DmmDwFix), (true, true, false, true));
        assert_eq!(row(Variant::DmmSpp), (true, true, true, false));
        assert_eq!(row(Variant::DmmCnn), (true, true, true, true));
    }

    #[test]
    fn names_round_trip() {
        for v in Variant::ALL {
            assert_eq!(v.paper_name().to_lowercase().parse::<Variant>().unwrap(), v);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{}\"", v.paper_name().to_lowercase()));
        }
        assert!("dmm".parse::<Variant>().unwrap_err().contains("dmm-cnn"));
    }
}
