//! Any byte string fed to the extractor: no panic, no unbounded allocation, and nothing
//! written outside the target directory, whatever the outcome.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mysql_agent::protocol::STATUS_ENTRY;
use mysql_agent::xbstream::{Extractor, Flavor};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the flavor, so both dialects of chunk 'S' are explored.
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let flavor = if selector & 1 == 0 { Flavor::MariaDb } else { Flavor::XtraBackup };
    let jail = tempfile::tempdir_in("/dev/shm").unwrap();
    let target = jail.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let _ = Extractor::new(&target, flavor)
        .with_trailer(STATUS_ENTRY)
        .extract(stream);
    let escaped: Vec<_> = std::fs::read_dir(jail.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != "target")
        .collect();
    assert!(escaped.is_empty(), "written outside the target: {escaped:?}");
});
