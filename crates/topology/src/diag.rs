//! Diagnostics: what is wrong, where, which rule, and how to fix it.

use std::fmt;
use std::ops::Range;

/// One problem found in a topology file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: error[{rule}]: {message}\n  help: {help}")]
pub struct Diagnostic {
    /// The file, as given by the caller.
    pub file: String,
    /// 1-based line of the offending value (0 when the file could not be read).
    pub line: usize,
    /// 1-based column, in characters (0 when the file could not be read).
    pub column: usize,
    /// Stable kebab-case id of the rule broken, e.g. `unknown-name`.
    pub rule: &'static str,
    /// What is wrong, naming the things involved.
    pub message: String,
    /// How to fix it.
    pub help: String,
}

/// Every problem found in a topology file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// The rule ids, in order (handy for tests and summaries).
    pub fn rules(&self) -> Vec<&'static str> {
        self.0.iter().map(|d| d.rule).collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics for one source file.
pub(crate) struct Reporter<'a> {
    source: &'a str,
    file: &'a str,
    found: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(source: &'a str, file: &'a str) -> Self {
        Reporter {
            source,
            file,
            found: Vec::new(),
        }
    }

    /// Records a problem at the start of `span` (byte offsets into the source).
    pub(crate) fn error(
        &mut self,
        span: Range<usize>,
        rule: &'static str,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        let found = diagnostic(
            self.source,
            self.file,
            span.start,
            rule,
            message.into(),
            help.into(),
        );
        self.found.push(found);
    }

    /// The 1-based line of a byte offset.
    pub(crate) fn line(&self, offset: usize) -> usize {
        line_column(self.source, offset).0
    }

    /// The diagnostics sorted by position (stable, so same-position ones keep their order).
    pub(crate) fn finish(mut self) -> Vec<Diagnostic> {
        self.found.sort_by_key(|d| (d.line, d.column));
        self.found
    }
}

/// A diagnostic at a byte offset of `source`.
pub(crate) fn diagnostic(
    source: &str,
    file: &str,
    offset: usize,
    rule: &'static str,
    message: String,
    help: String,
) -> Diagnostic {
    let (line, column) = line_column(source, offset);
    Diagnostic {
        file: file.to_string(),
        line,
        column,
        rule,
        message,
        help,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 6), (2, 1));
        assert_eq!(line_column(src, 10), (2, 4)); // after "bé ", é is two bytes
        assert_eq!(line_column(src, 999), (3, 1));
    }

    #[test]
    fn display_shows_position_rule_and_help() {
        let mut r = Reporter::new("x\ny", "t.toml");
        r.error(2..3, "syntax", "bad", "fix it");
        let d = Diagnostics(r.finish());
        assert_eq!(
            d.to_string(),
            "t.toml:2:1: error[syntax]: bad\n  help: fix it"
        );
    }
}
