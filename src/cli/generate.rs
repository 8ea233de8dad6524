//! `generate` (hidden): the files a package ships beside the binary, made from the grammar so
//! that they cannot drift from `--help`: the man pages (clap_mangen) and the completion files
//! (clap_complete). scripts/deb runs it with the binary it packages.
//!
//! - `mkomi generate man DIR`: `mkomi.1` and one page per subcommand, nested ones included
//!   (`mkomi-register.1`, `mkomi-snapshot-create.1`…);
//! - `mkomi generate completions DIR`: `mkomi.bash`, `_mkomi` (zsh) and `mkomi.fish`.
//!
//! Each file is written beside its place under a temporary name and renamed there, so a reader
//! (or a package build) never sees half a page.

use super::common::{fail, outln};
use super::{Cli, EXIT_STATUS, completions};
use clap::CommandFactory;
use clap_complete::{Generator, Shell};
use clap_mangen::Man;
use clap_mangen::roff::{Roff, roman};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What `generate` can fail on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or the directory could not be written.
    #[error("{path}: cannot {what}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// `generate`'s subcommands.
#[derive(clap::Subcommand)]
pub enum GenerateCmd {
    /// Write mkomi.1 and one page per subcommand (mkomi-register.1, mkomi-snapshot-create.1…)
    /// into DIR, created if missing.
    Man {
        /// The directory.
        dir: PathBuf,
    },
    /// Write the bash, zsh and fish completion files (mkomi.bash, _mkomi, mkomi.fish) into DIR,
    /// created if missing.
    Completions {
        /// The directory.
        dir: PathBuf,
    },
}

/// `mkomi generate …`: prints each file written.
pub fn generate(cmd: GenerateCmd) -> ExitCode {
    let (dir, files) = match cmd {
        GenerateCmd::Man { dir } => (dir, man_pages()),
        GenerateCmd::Completions { dir } => (dir, completion_files()),
    };
    match write_all(&dir, &files) {
        Ok(()) => {
            for (name, _) in &files {
                outln!("{}", dir.join(name).display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Creates `dir` and writes each `(name, bytes)` into it atomically.
fn write_all(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_owned(),
        what: "create the directory",
        source,
    })?;
    for (name, bytes) in files {
        write_atomic(&dir.join(name), bytes)?;
    }
    Ok(())
}

/// Writes `bytes` to `.NAME.mkomi-PID.tmp` beside `path` and renames it to `path`; the
/// temporary file is removed on failure. Not synced: the files are made again from the binary
/// at will, and the rename alone keeps a reader from seeing a partial one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.mkomi-{}.tmp", std::process::id()));
    let io = |what, source| Error::Io {
        path: path.to_owned(),
        what,
        source,
    };
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| io("write", e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io("rename into place", e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The completion files, named as each shell looks them up.
fn completion_files() -> Vec<(String, Vec<u8>)> {
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| (shell.file_name("mkomi"), completions::script(shell)))
        .collect()
}

/// Every man page: mkomi(1), then each visible subcommand's, depth first.
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    // No `help` subcommand pages: `mkomi help X` is `mkomi X --help`, which has its own page.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect(&cmd, true, &mut pages);
    pages
}

/// Adds `cmd`'s page and its visible subcommands' pages to `pages`.
fn collect(cmd: &clap::Command, top: bool, pages: &mut Vec<(String, Vec<u8>)>) {
    let man = Man::new(cmd.clone());
    pages.push((man.get_filename(), render(&man, cmd, top)));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, false, pages);
    }
}

/// The page's date: the day of `SOURCE_DATE_EPOCH` when set (reproducible builds: scripts/deb
/// sets it to the commit's time), else none, never the clock, so that the same binary always
/// writes the same pages.
fn page_date() -> String {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map(|epoch| {
            let (y, m, d) = mkomi::util::civil_from_days(epoch.div_euclid(86_400));
            format!("{y:04}-{m:02}-{d:02}")
        })
        .unwrap_or_default()
}

/// One page: clap_mangen's sections, except that the text after the options (`after_help`) is
/// split into EXIT STATUS (mkomi(1): [`EXIT_STATUS`]), EXAMPLES (a paragraph headed
/// "Example:" or "Examples:", kept as typed) and NOTES (the other paragraphs), where
/// clap_mangen would put it all, filled, under EXTRA.
fn render(man: &Man, cmd: &clap::Command, top: bool) -> Vec<u8> {
    // The title line written here: clap_mangen's leaves an empty argument (the date, when
    // there is none) unquoted, which shifts the source and manual into its place.
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let mut page = format!(
        ".TH \"{}\" \"1\" \"{}\" \"mkomi {}\" \"mkomi manual\"\n",
        name.to_uppercase(),
        page_date(),
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes();
    // Writing into a Vec cannot fail.
    let _ = man.render_name_section(&mut page);
    let _ = man.render_synopsis_section(&mut page);
    let _ = man.render_description_section(&mut page);
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        let _ = man.render_options_section(&mut page);
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        let _ = man.render_subcommands_section(&mut page);
    }
    let mut roff = Roff::default();
    if top {
        exit_status(&mut roff);
    } else if let Some(after) = cmd.get_after_help() {
        after_help(&mut roff, &after.to_string());
    }
    let _ = roff.to_writer(&mut page);
    if cmd.get_version().is_some() {
        let _ = man.render_version_section(&mut page);
    }
    page
}

/// EXIT STATUS from [`EXIT_STATUS`]: one tagged paragraph per code.
fn exit_status(roff: &mut Roff) {
    roff.control("SH", ["EXIT STATUS"]);
    // The first line is the heading `--help` shows.
    for line in EXIT_STATUS.lines().skip(1) {
        let (code, meaning) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        roff.control("TP", []);
        roff.text([roman(code)]);
        roff.text([roman(meaning.trim())]);
    }
}

/// A subcommand's after_help, paragraph by paragraph: the examples (indented lines) in no-fill
/// mode so that each command stays on its line, the rest as filled text.
fn after_help(roff: &mut Roff, text: &str) {
    let (mut examples, mut notes) = (Vec::new(), Vec::new());
    for para in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
        match para.split_once('\n') {
            Some((head, rest)) if head.trim_end().starts_with("Example") && head.ends_with(':') => {
                examples.push(rest)
            }
            _ => notes.push(para),
        }
    }
    if !examples.is_empty() {
        roff.control("SH", ["EXAMPLES"]);
        for (i, para) in examples.iter().enumerate() {
            if i > 0 {
                roff.control("PP", []);
            }
            roff.control("nf", []);
            for line in para.lines() {
                roff.text([roman(line)]);
            }
            roff.control("fi", []);
        }
    }
    if !notes.is_empty() {
        roff.control("SH", ["NOTES"]);
        for (i, para) in notes.iter().enumerate() {
            if i > 0 {
                roff.control("PP", []);
            }
            for line in para.lines() {
                roff.text([roman(line.trim())]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file is replaced whole, and a failed rename leaves no temporary file behind.
    #[test]
    fn writes_are_atomic_and_clean_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let page = dir.path().join("mkomi.1");
        std::fs::write(&page, "old, longer than the new text").expect("write");
        write_atomic(&page, b"new").expect("replace");
        assert_eq!(std::fs::read(&page).expect("read"), b"new");
        // A directory in the file's place: the rename fails.
        let blocked = dir.path().join("mkomi.bash");
        std::fs::create_dir(&blocked).expect("mkdir");
        std::fs::write(blocked.join("x"), "").expect("write");
        let err = write_atomic(&blocked, b"script").expect_err("rename over a directory");
        assert!(
            err.to_string().contains("cannot rename into place"),
            "{err}"
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["mkomi.1", "mkomi.bash"]);
    }

    /// mkomi(1)'s EXIT STATUS has one entry per line of [`EXIT_STATUS`], codes in order.
    #[test]
    fn exit_status_has_every_code() {
        let mut roff = Roff::default();
        exit_status(&mut roff);
        let text = roff.to_roff();
        let codes: Vec<&str> = text
            .split(".TP\n")
            .skip(1)
            .filter_map(|entry| entry.lines().next())
            .collect();
        assert_eq!(codes, ["0", "1", "2", "3", "4", "130"]);
    }
}
