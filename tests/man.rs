//! The man pages `mkomi generate man` writes, rendered by the real `man` (man-db, groff): one
//! page per command and nested subcommand, each listing exactly the options and arguments of
//! `--help`, and mkomi(1) listing every exit code `--help` gives. A page that drifts from the
//! grammar fails here.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The sections of a rendered page that hold no options. Any other section is taken for a list
/// of options (clap_mangen writes OPTIONS, and one section per help heading).
const PROSE: &[&str] = &[
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "SUBCOMMANDS",
    "EXAMPLES",
    "NOTES",
    "EXIT STATUS",
    "VERSION",
];

/// `man -l PAGE` as plain text (UTF-8: value names such as `snap-…` keep their ellipsis;
/// Debian's groff still sets `\-` as an ASCII hyphen), as wide as no line wraps.
fn render(page: &Path) -> String {
    let out = Command::new("man")
        .args(["-l", "--no-hyphenation", "--no-justification"])
        .arg(page)
        .env("MANWIDTH", "200")
        .env("LC_ALL", "C.UTF-8")
        .env("MANPAGER", "cat")
        .env_remove("MAN_KEEP_FORMATTING")
        .output()
        .expect("man (Debian man-db) could not run");
    assert!(
        out.status.success(),
        "man -l {}: {}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // Bold and underline are overstrikes when stdout is not a terminal; tabs become spaces.
    let mut col = Command::new("col")
        .arg("-bx")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("col (bsdextrautils) could not run");
    let mut stdin = col.stdin.take().expect("stdin");
    let text = out.stdout;
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &text));
    let plain = col.wait_with_output().expect("col");
    writer.join().expect("writer").expect("write to col");
    assert!(plain.status.success());
    String::from_utf8(plain.stdout).expect("UTF-8")
}

/// A text's sections: heading (a line at column 0) → its lines.
fn sections(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if !line.is_empty() && !line.starts_with(' ') {
            current = line.trim().to_owned();
            out.entry(current.clone()).or_default();
        } else if let Some(lines) = out.get_mut(&current) {
            lines.push(line.to_owned());
        }
    }
    out
}

/// The option or argument an entry's heading names, normalized: `-o --output <DIR>`,
/// `--force`, `<SOURCE>`, `[DIR]`. The heading's words are taken while they are options or value
/// names; what follows (`[default: …]`, or the help text, which man sets on the same line after
/// a short tag) is not.
fn entry(heading: &str) -> Option<String> {
    let words: Vec<&str> = heading
        .split_whitespace()
        .map(|w| w.trim_end_matches(','))
        .take_while(|w| {
            (w.starts_with('-') && w.len() > 1 && !w.contains('='))
                || (w.starts_with('<') && w.trim_end_matches("...").ends_with('>'))
                || (w.starts_with("[<") && w.ends_with(">]"))
                || (w.starts_with('[')
                    && w.trim_end_matches("...").ends_with(']')
                    && !w.contains(':'))
        })
        .map(|w| w.trim_end_matches("..."))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// The options and arguments `mkomi ARGS --help` lists: the headings of its Options and
/// Arguments sections (indented 2, or 6 for an option without a short form).
fn help_entries(path: &[&str]) -> BTreeSet<String> {
    let mut args = path.to_vec();
    args.push("--help");
    let help = String::from_utf8(ok(&args).stdout).expect("UTF-8");
    let mut set = BTreeSet::new();
    for (heading, lines) in sections(&help) {
        if heading.starts_with("Usage:") || heading == "Commands:" {
            continue;
        }
        if heading != "Options:" && heading != "Arguments:" {
            // The after_help (examples, notes, exit codes): no option headings there, and
            // its indented example lines may start with an option.
            continue;
        }
        for line in lines {
            let indent = line.len() - line.trim_start().len();
            if indent == 2 || indent == 6 {
                // The heading ends where the help text starts, two spaces on.
                let head = line.trim().split("  ").next().unwrap_or_default();
                set.extend(entry(head));
            }
        }
    }
    set
}

/// The options and arguments a rendered page lists: the tags of its option sections (indented
/// 7, the help text indented further).
fn man_entries(text: &str, page: &str) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for (heading, lines) in sections(text) {
        if PROSE.contains(&heading.as_str())
            || heading.starts_with("MKOMI")
            || heading.starts_with("mkomi ")
        {
            continue;
        }
        assert_eq!(
            heading, "OPTIONS",
            "{page}: section {heading:?}: a new help heading? list it with Options here"
        );
        for line in lines {
            let indent = line.len() - line.trim_start().len();
            if indent == 7 {
                set.extend(entry(line.trim()));
            }
        }
    }
    set
}

/// The subcommands `mkomi PATH --help` lists (without `help`), recursively: each as its path.
fn commands(path: &[String], out: &mut Vec<Vec<String>>) {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let help = String::from_utf8(ok(&args).stdout).expect("UTF-8");
    let names: Vec<String> = sections(&help)
        .remove("Commands:")
        .unwrap_or_default()
        .iter()
        .filter(|l| l.len() - l.trim_start().len() == 2)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|n| n != "help")
        .collect();
    for name in names {
        let mut sub = path.to_vec();
        sub.push(name);
        out.push(sub.clone());
        commands(&sub, out);
    }
}

/// Every subcommand has its page and every page its subcommand; on each, the options and
/// arguments (long and short names, value names) are those of `--help`.
#[test]
fn pages_list_what_help_lists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = ok(&["generate", "man", dir.path().to_str().expect("UTF-8")]);
    let mut paths = vec![vec![]];
    commands(&[], &mut paths);
    // register, build, …, snapshot and its four, image and its nine, store and its two.
    assert!(paths.len() >= 28, "{paths:?}");
    let expected: BTreeSet<String> = paths
        .iter()
        .map(|p| {
            let mut name = vec!["mkomi"];
            name.extend(p.iter().map(String::as_str));
            format!("{}.1", name.join("-"))
        })
        .collect();
    let written: BTreeSet<String> = entries(dir.path()).into_iter().collect();
    assert_eq!(written, expected, "pages written vs subcommands of --help");
    // generate prints each page it wrote.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        expected.len()
    );
    for path in &paths {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let mut name = vec!["mkomi"];
        name.extend(&args);
        let page = format!("{}.1", name.join("-"));
        let text = render(&dir.path().join(&page));
        let title = format!("{}(1)", name.join("-").to_uppercase());
        assert!(text.starts_with(&title), "{page}: title: {text:.200}");
        assert!(
            text.contains(&format!("NAME\n       {} - ", name.join("-"))),
            "{page}: NAME must read `name - summary` (whatis, apropos)"
        );
        let help = help_entries(&args);
        assert!(help.contains("-h --help"), "{page}: {help:?}");
        assert_eq!(
            man_entries(&text, &page),
            help,
            "{page} vs {} --help",
            name.join(" ")
        );
    }
    // A value name the help gives reaches the page (a check that the comparison sees them).
    let register = render(&dir.path().join("mkomi-register.1"));
    assert!(man_entries(&register, "mkomi-register.1").contains("-o --output <DIR>"));
    assert!(man_entries(&register, "mkomi-register.1").contains("<SOURCE>"));
}

/// mkomi(1)'s EXIT STATUS lists the exit codes `mkomi --help` gives, each with the same text;
/// the examples stay one command per line.
#[test]
fn mkomi_1_gives_the_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    ok(&["generate", "man", dir.path().to_str().expect("UTF-8")]);
    let help = String::from_utf8(ok(&["--help"]).stdout).expect("UTF-8");
    let man = render(&dir.path().join("mkomi.1"));
    let codes = |lines: &[String]| -> BTreeMap<u32, String> {
        // One entry per code: its line and the wrapped lines after it, spaces collapsed.
        let mut map: BTreeMap<u32, String> = BTreeMap::new();
        let mut last = None;
        for line in lines {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            match first.parse::<u32>() {
                Ok(code) if line.len() - line.trim_start().len() < 8 => {
                    map.insert(code, words.collect::<Vec<_>>().join(" "));
                    last = Some(code);
                }
                _ => {
                    if let Some(text) = last.and_then(|c| map.get_mut(&c)) {
                        text.push(' ');
                        text.push_str(&line.split_whitespace().collect::<Vec<_>>().join(" "));
                    }
                }
            }
        }
        map
    };
    let from_help = codes(
        sections(&help)
            .get("Exit codes:")
            .expect("--help: Exit codes:"),
    );
    let from_man = codes(
        sections(&man)
            .get("EXIT STATUS")
            .expect("mkomi(1): EXIT STATUS"),
    );
    assert_eq!(
        from_help.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 130]
    );
    assert!(from_help[&130].starts_with("interrupted"), "{from_help:?}");
    assert_eq!(from_man, from_help);

    let register = render(&dir.path().join("mkomi-register.1"));
    let examples = &sections(&register)["EXAMPLES"];
    assert!(
        examples.iter().any(|l| l.trim()
            == "mkomi register debian.qcow2 -o debian-omi --arch x86_64 --boot-mode uefi"),
        "{examples:?}"
    );
}
