//! The jobs file of `replicate --from-file`: one `SRC DST` pair a line, read and checked whole
//! before anything starts. Pure: it reads no file and contacts no star.

use std::collections::HashMap;

use crate::spec::StarPath;

/// One replication of a batch, as its line gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The line's number in the file, from 1.
    pub line: usize,
    /// What to copy.
    pub source: StarPath,
    /// Where to put it.
    pub target: StarPath,
}

/// Why a line of the jobs file is refused, without the file's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    /// The line's number, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// The jobs `text` lists, in order: one `SRC DST` pair a line, the two `STAR:/abs/path`
/// separated by spaces or tabs, leading and trailing blanks ignored. Blank lines and lines
/// whose first non-blank character is `#` are skipped.
///
/// # Errors
///
/// [`LineError`] for the first line that is not two plain `STAR:/abs/path`, whose destination
/// is its own source, or whose destination an earlier line names already (two replications
/// writing one file would race).
pub fn parse(text: &str) -> Result<Vec<Job>, LineError> {
    let mut jobs = Vec::new();
    let mut targets: HashMap<StarPath, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let entry = raw.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let refuse = |reason: String| LineError { line, reason };
        let fields: Vec<&str> = entry.split_whitespace().collect();
        let [source, target] = fields[..] else {
            return Err(refuse(format!(
                "expected SRC DST (two STAR:/abs/path separated by spaces), found {} field{}",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" }
            )));
        };
        let source = StarPath::parse(source).map_err(|e| refuse(e.to_string()))?;
        let target = StarPath::parse(target).map_err(|e| refuse(e.to_string()))?;
        if source == target {
            return Err(refuse(format!("destination {target} is the source itself")));
        }
        if let Some(first) = targets.get(&target) {
            return Err(refuse(format!(
                "destination {target} is already written by line {first}"
            )));
        }
        targets.insert(target.clone(), line);
        jobs.push(Job {
            line,
            source,
            target,
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn star_path(text: &str) -> StarPath {
        StarPath::parse(text).unwrap()
    }

    #[test]
    fn pairs_are_read_and_comments_and_blank_lines_skipped() {
        let text =
            "# nightly\n\n  star-a:/d/a  star-b:/e/a\t\nstar-a:/d/b\tstar-c:/e/b\n   # done\n";
        let jobs = parse(text).unwrap();
        assert_eq!(
            jobs,
            [
                Job {
                    line: 3,
                    source: star_path("star-a:/d/a"),
                    target: star_path("star-b:/e/a"),
                },
                Job {
                    line: 4,
                    source: star_path("star-a:/d/b"),
                    target: star_path("star-c:/e/b"),
                },
            ]
        );
        assert_eq!(parse("").unwrap(), []);
    }

    #[test]
    fn a_bad_line_is_named_with_its_number_and_reason() {
        let cases = [
            (
                "star-a:/d/a\n",
                1,
                "expected SRC DST (two STAR:/abs/path separated by spaces), found 1 field",
            ),
            ("\nstar-a:/d/a star-b:/e/a extra\n", 2, "found 3 fields"),
            ("star-a:/d/a star-b:e/a\n", 1, "bad path \"e/a\""),
            ("star-a:/d/a star-b:/e/\n", 1, "bad path \"/e/\""),
            (
                "star-a:/d/a star-a:/d/a\n",
                1,
                "destination star-a:/d/a is the source itself",
            ),
            (
                "star-a:/d/a star-b:/e/a\n#\nstar-a:/d/b star-b:/e/a\n",
                3,
                "destination star-b:/e/a is already written by line 1",
            ),
        ];
        for (text, line, reason) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.reason.contains(reason), "{text:?}: {err}");
        }
    }
}
