//! pjdfstest (the Rust rewrite, crate `pjdfstest`) through the Linux kernel NFS client: the
//! binary the README's test command installs, and the pure reading of its output that the
//! comparison with NFS-Ganesha rests on.
//!
//! The binary must be static (the kclient guest has no Rust runtime libraries):
//! `scripts/install-deps` builds it with `-C target-feature=+crt-static` into
//! [`DEFAULT_PATH`]; `$PJDFSTEST` overrides the location.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Where `scripts/install-deps` installs the static pjdfstest binary.
pub const DEFAULT_PATH: &str = "/opt/nasgw-test-tools/bin/pjdfstest";

/// The static pjdfstest binary: `$PJDFSTEST`, else [`DEFAULT_PATH`]; panics when missing.
pub fn binary() -> PathBuf {
    let p = std::env::var_os("PJDFSTEST").map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from);
    assert!(p.is_file(), "pjdfstest not found at {}: run scripts/install-deps (or set PJDFSTEST)", p.display());
    p
}

/// What one case did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// `ok`.
    Passed,
    /// `FAILED` (and the expected-failure kinds, which the guest script never configures).
    Failed,
    /// `skipped` (a feature or privilege the run lacks).
    Skipped,
}

/// One server's run: every case by name, and the failure messages pjdfstest printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Case name -> outcome.
    pub cases: BTreeMap<String, Outcome>,
    /// Case name -> the lines pjdfstest printed under a failed case (its panic message).
    pub details: BTreeMap<String, String>,
    /// True when pjdfstest printed its summary (it ran to the end).
    pub finished: bool,
}

impl Report {
    /// How many cases had `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.cases.values().filter(|o| **o == outcome).count()
    }

    /// `passed / total (failed failed, skipped skipped)`.
    pub fn summary(&self) -> String {
        format!(
            "{} / {} passed ({} failed, {} skipped)",
            self.count(Outcome::Passed),
            self.cases.len(),
            self.count(Outcome::Failed),
            self.count(Outcome::Skipped)
        )
    }
}

/// Removes ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Reads the output of one pjdfstest run: `NAME <spaces> ok|FAILED|skipped` per case, indented
/// detail lines after it (a failure's panic message: a tab, then more lines indented with
/// spaces), a `Summary:` line at the end. Pure.
pub fn parse(output: &str) -> Report {
    let mut r = Report::default();
    let mut last: Option<String> = None;
    for raw in output.lines() {
        let line = strip_ansi(raw);
        if line.starts_with(char::is_whitespace) {
            if let Some(name) = &last {
                if r.cases.get(name) == Some(&Outcome::Failed) {
                    let d = r.details.entry(name.clone()).or_default();
                    if !d.is_empty() {
                        d.push('\n');
                    }
                    d.push_str(line.trim());
                }
            }
            continue;
        }
        if line.starts_with("Summary:") {
            r.finished = true;
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(name), Some(word)) = (words.next(), words.next_back()) else { continue };
        if !name.contains("::") {
            continue;
        }
        let outcome = match (word, line.trim_end().ends_with("failed as expected")) {
            ("ok", _) => Outcome::Passed,
            ("FAILED", _) | ("UNEXPECTEDLY", _) | (_, true) => Outcome::Failed,
            ("skipped", _) => Outcome::Skipped,
            _ => continue,
        };
        r.cases.insert(name.to_string(), outcome);
        last = Some(name.to_string());
    }
    r
}

/// Splits the guest script's output into one section per server (`== TARGET NAME` lines).
pub fn sections(output: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("== TARGET ") {
            cur = Some(name.trim().to_string());
            out.entry(name.trim().to_string()).or_default();
            continue;
        }
        if let Some(name) = &cur {
            let s = out.get_mut(name).expect("section exists");
            s.push_str(line);
            s.push('\n');
        }
    }
    out
}

/// The cases `anchor` passes and `ours` does not (failed, skipped or missing): what must be
/// empty for nasgw to be at least as POSIX-correct as the anchor.
pub fn regressions(ours: &Report, anchor: &Report) -> Vec<String> {
    anchor
        .cases
        .iter()
        .filter(|(_, o)| **o == Outcome::Passed)
        .filter(|(name, _)| ours.cases.get(*name) != Some(&Outcome::Passed))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The cases `ours` passes and `anchor` does not.
pub fn improvements(ours: &Report, anchor: &Report) -> Vec<String> {
    regressions(anchor, ours)
}

/// Runs pjdfstest as root in `dir` (made 0755), with its second file system for EXDEV cases.
pub fn run_in(dir: &Path, secondary: &Path) -> Report {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = secondary.parent().unwrap().join("pjd.toml");
    std::fs::write(
        &conf,
        "[features]\nposix_fallocate = {}\nrename_ctime = {}\nutimensat = {}\nutime_now = {}\n[settings]\nnaptime = 0.001\nallow_remount = false\nexpected_failures = []\n[dummy_auth]\nentries = [[\"nobody\", \"nogroup\"], [\"daemon\", \"daemon\"]]\n",
    )
    .unwrap();
    let t = Instant::now();
    let out = Command::new(binary())
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .arg("-s")
        .arg(secondary)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let r = parse(&String::from_utf8_lossy(&out.stdout));
    println!("pjdfstest in {}: {} in {:?}", dir.display(), r.summary(), t.elapsed());
    assert!(r.finished, "pjdfstest did not finish:\n{}", String::from_utf8_lossy(&out.stderr));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str =
        "\u{1b}[34mmkfifo::eexist_file_exists::dir\u{1b}[0m                                    \u{1b}[32mok\u{1b}[0m
chmod::clear_isgid_after_chown                                          FAILED
\tassertion `left == right` failed
  left: 0o2755
chown::ctime                                                            ok
utimensat::y2038                                              failed as expected
posix_fallocate::eperm                                                  skipped
\trequires features: posix_fallocate
not a case line
Summary: 1 failed, 1 skipped, 2 passed, 1 expected failures, 5 total
";

    #[test]
    fn cases_outcomes_and_failure_details_are_read() {
        let r = parse(RUN);
        assert!(r.finished);
        assert_eq!(r.cases.len(), 5);
        assert_eq!(r.cases["mkfifo::eexist_file_exists::dir"], Outcome::Passed);
        assert_eq!(r.cases["chmod::clear_isgid_after_chown"], Outcome::Failed);
        assert_eq!(r.cases["utimensat::y2038"], Outcome::Failed);
        assert_eq!(r.cases["posix_fallocate::eperm"], Outcome::Skipped);
        assert_eq!(r.details["chmod::clear_isgid_after_chown"], "assertion `left == right` failed\nleft: 0o2755");
        assert!(!r.details.contains_key("posix_fallocate::eperm"), "skip reasons are not failures");
        assert_eq!(r.summary(), "2 / 5 passed (2 failed, 1 skipped)");
        assert!(!parse("a::b ok\n").finished, "no summary: the run did not finish");
    }

    #[test]
    fn sections_split_by_target_and_regressions_compare_passes() {
        let out = "boot noise\n== TARGET nasgw\na::x ok\na::y FAILED\n== DONE nasgw\n== TARGET ganesha\na::x ok\na::y ok\na::z ok\nb::w FAILED\n";
        let s = sections(out);
        let (ours, anchor) = (parse(&s["nasgw"]), parse(&s["ganesha"]));
        assert_eq!(regressions(&ours, &anchor), ["a::y", "a::z"], "failed, and missing, both count");
        let mut better = ours.clone();
        better.cases.insert("b::w".into(), Outcome::Passed);
        assert_eq!(improvements(&better, &anchor), ["b::w"]);
    }
}
