//! A config error an admin can act on: file, line, column, what is wrong, what would be right.

use std::fmt;

/// One problem in a config file, pointing at the offending text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the admin named it (or `<embedded default>`).
    pub origin: String,
    /// 1-based line of the offending text; 0 when the problem has no place (unreadable file).
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What would be right.
    pub hint: Option<String>,
    /// The offending source line, for the caret display.
    pub source_line: Option<String>,
}

impl ConfigError {
    /// An error at byte `offset` of `text`.
    pub fn at(origin: &str, text: &str, offset: usize, message: String, hint: Option<String>) -> Self {
        let offset = floor_char_boundary(text, offset.min(text.len()));
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = text[line_start..offset].chars().count() + 1;
        let source_line = text[line_start..].lines().next().unwrap_or("").to_string();
        Self { origin: origin.to_string(), line, column, message, hint, source_line: Some(source_line) }
    }

    /// An error about the file as a whole (missing, unreadable).
    pub fn whole_file(origin: &str, message: String, hint: Option<String>) -> Self {
        Self { origin: origin.to_string(), line: 0, column: 0, message, hint, source_line: None }
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for ConfigError {
    /// `FILE:LINE:COL: MESSAGE`, then the line with a caret, then `hint: ...` (rustc's shape).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.origin, self.message)?;
        } else {
            write!(f, "{}:{}:{}: {}", self.origin, self.line, self.column, self.message)?;
        }
        if let Some(src) = &self.source_line {
            let gutter = self.line.to_string().len();
            write!(f, "\n {:gutter$} |\n {} | {}", "", self.line, src)?;
            let pad: String = src.chars().take(self.column - 1).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
            write!(f, "\n {:gutter$} | {}^", "", pad)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_from_one() {
        let text = "a = 1\n  bad = 2\n";
        let e = ConfigError::at("f.toml", text, 8, "x".into(), None);
        assert_eq!((e.line, e.column), (2, 3));
        assert_eq!(e.source_line.as_deref(), Some("  bad = 2"));
        assert!(e.to_string().starts_with("f.toml:2:3: x"));
    }

    #[test]
    fn offset_inside_a_multibyte_char_does_not_panic() {
        let text = "é = 1";
        let e = ConfigError::at("f", text, 1, "x".into(), None);
        assert_eq!((e.line, e.column), (1, 1));
    }
}
