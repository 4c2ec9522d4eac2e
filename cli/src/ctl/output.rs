//! What `ctl` prints: the API's JSON as it came (`--output json`, for scripts), or aligned
//! columns for people (`--output table`, the default). Results go to stdout; warnings and
//! progress to stderr, so a pipe only ever carries the result.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tabwriter::TabWriter;

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns and short summaries.
    #[default]
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// Columns with a header row, aligned on printing.
pub(crate) struct Table {
    text: String,
    rows: usize,
}

impl Table {
    pub(crate) fn new(headers: &[&str]) -> Table {
        let mut table = Table { text: String::new(), rows: 0 };
        table.push(headers.iter().copied());
        table
    }

    pub(crate) fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.push(cells);
        self.rows += 1;
    }

    fn push<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let cells: Vec<String> = cells.into_iter().map(|cell| cell_text(cell.as_ref())).collect();
        self.text.push_str(&cells.join("\t"));
        self.text.push('\n');
    }

    /// Prints the table, or `empty` alone when it has no rows.
    pub(crate) fn print(self, empty: &str) -> io::Result<()> {
        if self.rows == 0 {
            return line(empty);
        }
        aligned(&self.text)
    }
}

/// `name: value` lines, values aligned: one resource shown whole.
pub(crate) fn fields(fields: &[(&str, String)]) -> io::Result<()> {
    let mut text = String::new();
    for (name, value) in fields {
        text.push_str(&format!("{name}:\t{}\n", cell_text(value)));
    }
    aligned(&text)
}

/// One line on stdout.
pub(crate) fn line(text: impl std::fmt::Display) -> io::Result<()> {
    writeln!(io::stdout().lock(), "{text}")
}

/// Text on stdout as it is (CSV downloads).
pub(crate) fn raw(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// A JSON answer, pretty-printed on stdout.
pub(crate) fn json(value: &Value) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)?;
    writeln!(stdout)
}

/// A note for the person at the terminal, on stderr.
pub(crate) fn warn(text: impl std::fmt::Display) {
    eprintln!("warning: {text}");
}

/// A millisecond timestamp as RFC 3339 UTC; `-` for 0 (never), `never` past year 9999 (an
/// instance that never expires is stored as the largest timestamp).
pub(crate) fn time(millis: u64) -> String {
    const YEAR_10000: u64 = 253_402_300_800_000;
    match millis {
        0 => "-".into(),
        YEAR_10000.. => "never".into(),
        millis => humantime::format_rfc3339_seconds(
            SystemTime::UNIX_EPOCH + Duration::from_millis(millis),
        )
        .to_string(),
    }
}

/// Seconds as `1h 2m 3s`.
pub(crate) fn seconds(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

fn aligned(text: &str) -> io::Result<()> {
    let mut writer = TabWriter::new(io::stdout().lock()).padding(3);
    writer.write_all(text.as_bytes())?;
    writer.flush()
}

/// A cell on one line: a tab or newline inside a value would break the columns.
fn cell_text(value: &str) -> String {
    let value = if value.is_empty() { "-" } else { value };
    value.replace(['\t', '\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(time(u64::MAX), "never");
        assert_eq!(seconds(3723), "1h 2m 3s");
    }

    #[test]
    fn cells_stay_on_one_line() {
        assert_eq!(cell_text("a\tb\nc"), "a b c");
        assert_eq!(cell_text(""), "-");
    }
}
