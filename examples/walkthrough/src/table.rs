//! The status table printed at each step.

/// One node's status, as the story shows it in its tables.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusRow {
    /// The node (and which release it runs).
    pub node: String,
    /// Software layout version.
    pub slv: u32,
    /// Metadata layout version (on disk).
    pub mlv: u32,
    /// MLV < SLV.
    pub pre_finalized: bool,
    /// The prepare index, when prepared.
    pub prepared: Option<u64>,
    /// Keys in the store.
    pub keys: u64,
    /// Finalized features above the initial layout, ascending.
    pub finalized: Vec<String>,
    /// How many features the catalog has above the initial layout.
    pub catalog_features: usize,
}

impl StatusRow {
    fn cells(&self) -> [String; 7] {
        [
            self.node.clone(),
            self.slv.to_string(),
            self.mlv.to_string(),
            yes_no(self.pre_finalized).to_owned(),
            self.prepared
                .map_or_else(|| "no".to_owned(), |index| format!("yes (index {index})")),
            self.keys.to_string(),
            self.finalized_cell(),
        ]
    }
}

impl StatusRow {
    /// "none", "all N" (every feature of the catalog above the initial layout), or the
    /// names.
    fn finalized_cell(&self) -> String {
        if self.finalized.is_empty() {
            "none".to_owned()
        } else if self.finalized.len() == self.catalog_features {
            format!("all {}", self.catalog_features)
        } else {
            self.finalized.join(", ")
        }
    }
}

const HEADER: [&str; 7] = [
    "node",
    "SLV",
    "MLV",
    "pre-finalized?",
    "prepared?",
    "keys",
    "features finalized",
];

/// `rows` as a table, optionally with a first column of labels; one line per entry.
pub(super) fn render(labels: Option<(&str, &[String])>, rows: &[StatusRow]) -> Vec<String> {
    let mut grid: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 1);
    let mut header: Vec<String> = HEADER.iter().map(|h| (*h).to_owned()).collect();
    if let Some((title, _)) = labels {
        header.insert(0, title.to_owned());
    }
    grid.push(header);
    for (i, row) in rows.iter().enumerate() {
        let mut cells: Vec<String> = row.cells().into();
        if let Some((_, names)) = labels {
            cells.insert(0, names.get(i).cloned().unwrap_or_default());
        }
        grid.push(cells);
    }
    let columns = grid[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| grid.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("   | {} |", padded.join(" | "))
    };
    let rule = format!(
        "   |{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let mut lines = vec![line(&grid[0]), rule];
    lines.extend(grid[1..].iter().map(|r| line(r)));
    lines
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_columns() {
        let row = StatusRow {
            node: "kv-1 (old)".into(),
            slv: 0,
            mlv: 0,
            pre_finalized: false,
            prepared: Some(300),
            keys: 300,
            finalized: Vec::new(),
            catalog_features: 4,
        };
        let lines = render(None, &[row]);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("   | node "), "{lines:?}");
        assert!(lines[2].contains("yes (index 300)"), "{lines:?}");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{lines:?}");
        assert!(lines[2].contains("| none "), "{lines:?}");
    }

    #[test]
    fn all_features_finalized_reads_all_n() {
        let mut row = StatusRow {
            node: "kv-1".into(),
            slv: 4,
            mlv: 4,
            pre_finalized: false,
            prepared: None,
            keys: 1,
            finalized: vec!["A".into(), "B".into()],
            catalog_features: 2,
        };
        assert_eq!(row.finalized_cell(), "all 2");
        row.finalized.pop();
        assert_eq!(row.finalized_cell(), "A");
    }
}
