//! The README's "What survives what" table is the fault matrix: every row names tests that
//! exist, and every fault or bad-input test in tests/faults.rs, and every adversarial test in
//! tests/hostile.rs, has its row.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Test function names defined in the Rust files under `dir`.
fn test_names(dir: &Path, names: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            test_names(&path, names);
        } else if path.extension().is_some_and(|e| e == "rs") {
            for line in fs::read_to_string(&path).unwrap().lines() {
                let line = line.trim_start();
                if let Some(rest) = line
                    .strip_prefix("async fn ")
                    .or_else(|| line.strip_prefix("fn "))
                {
                    names.insert(rest.split('(').next().unwrap().to_owned());
                }
            }
        }
    }
}

#[test]
fn the_readme_table_matches_the_fault_tests() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("## What survives what")
        .nth(1)
        .expect("README has a \"What survives what\" section");
    let section = section.split("\n## ").next().unwrap();
    let cited: BTreeSet<String> = section
        .lines()
        .filter(|l| l.starts_with('|'))
        .flat_map(|l| {
            l.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|s| {
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();

    let mut defined = BTreeSet::new();
    test_names(&root().join("tests"), &mut defined);
    test_names(&root().join("src"), &mut defined);
    let missing: Vec<_> = cited.difference(&defined).collect();
    assert!(
        missing.is_empty(),
        "the README cites tests that do not exist: {missing:?}"
    );

    let faults = fs::read_to_string(root().join("tests/faults.rs")).unwrap();
    let mut fault_tests = BTreeSet::new();
    for line in faults.lines() {
        if let Some(name) = line
            .strip_prefix("async fn ")
            .map(|r| r.split('(').next().unwrap())
            && (name.starts_with("fault_") || name.starts_with("bad_input_"))
        {
            fault_tests.insert(name.to_owned());
        }
    }
    assert!(fault_tests.len() >= 9, "{fault_tests:?}");
    // Every adversarial test has its row too.
    let hostile = fs::read_to_string(root().join("tests/hostile.rs")).unwrap();
    let mut hostile_tests = 0;
    for (i, line) in hostile.lines().enumerate() {
        let previous = hostile.lines().nth(i.wrapping_sub(1)).unwrap_or("");
        if previous.starts_with("#[")
            && previous.contains("test")
            && let Some(name) = line
                .strip_prefix("async fn ")
                .or_else(|| line.strip_prefix("fn "))
                .map(|r| r.split('(').next().unwrap())
        {
            fault_tests.insert(name.to_owned());
            hostile_tests += 1;
        }
    }
    assert!(
        hostile_tests >= 5,
        "{hostile_tests} adversarial tests found"
    );
    let uncited: Vec<_> = fault_tests.difference(&cited).collect();
    assert!(
        uncited.is_empty(),
        "fault tests missing from the README table: {uncited:?}"
    );
}
