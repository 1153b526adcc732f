//! The formats of every tool and version, from fixtures: the metadata files each tool writes
//! (tests/fixtures/metadata/<tool-version-case>/, with what the agent must read from them in
//! `expected`), and XtraBackup-flavour streams (sparse chunks, trailing holes, interleaving)
//! that cannot be produced here, built chunk by chunk and compared byte for byte.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use mysql_agent::coordinates::Position;
use mysql_agent::metadata::{self, BackupMetadata};
use mysql_agent::server_version::ServerVersion;
use mysql_agent::xbstream::{self, Chunk, Decoder, Flavor, WRITER_CHUNK_SIZE, encode_file};

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metadata")
}

/// What the agent reads from one fixture directory, as `key = value` pairs.
fn read_as_the_agent_does(dir: &Path) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    let meta = BackupMetadata::read(dir).unwrap();
    match meta.coordinates().unwrap() {
        None => {
            seen.insert("coordinates".into(), "none".into());
        }
        Some(c) => {
            seen.insert("origin".into(), format!("{:?}", c.origin));
            let position = match c.position {
                Position::File { file, pos } => format!("File {file}:{pos}"),
                Position::MysqlGtid { gtid_set } => format!("MysqlGtid {gtid_set}"),
                Position::MariaDbGtid { gtid_pos } => format!("MariaDbGtid {gtid_pos}"),
            };
            seen.insert("position".into(), position);
        }
    }
    if let Some(backup_type) = meta.backup_type().unwrap() {
        let prepared = if metadata::is_prepared(&backup_type) {
            "yes"
        } else {
            "no"
        };
        seen.insert("prepared".into(), prepared.into());
        seen.insert("backup_type".into(), backup_type);
    }
    if let Some(version) = meta.info_field("server_version") {
        seen.insert(
            "server_version".into(),
            ServerVersion::parse(&version).unwrap().to_string(),
        );
    }
    seen
}

#[test]
fn every_metadata_fixture_reads_as_expected() {
    let mut checked = 0;
    for entry in fs::read_dir(fixtures()).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let expected = fs::read_to_string(dir.join("expected"))
            .unwrap_or_else(|_| panic!("{name} has no `expected` file"));
        let seen = read_as_the_agent_does(&dir);
        for line in expected.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line.split_once(" = ").unwrap();
            assert_eq!(
                seen.get(key).map(String::as_str),
                Some(value),
                "{name}: {key}"
            );
        }
        // `prepared = no` is implied by a full backup; anything read must be expected.
        for key in seen.keys() {
            assert!(
                expected.contains(&format!("{key} = ")) || key == "prepared",
                "{name}: {key} = {} read but not expected",
                seen[key]
            );
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} fixtures");
}

/// Percona's own format document works through a sparse chunk for `test/t1.ibd`: map count
/// at byte 25, length at 29, offset at 37, CRC at 45, map at 49.
#[test]
fn sparse_chunk_layout_matches_perconas_worked_example() {
    let mut out = Vec::new();
    let data = b"page data";
    Chunk::Sparse {
        path: "test/t1.ibd",
        offset: 65536,
        map: &[(0, 4), (100, 5)],
        data,
    }
    .encode(&mut out);
    assert_eq!(&out[..8], b"XBSTCK01");
    assert_eq!(out[9], b'S');
    assert_eq!(
        u32::from_le_bytes(out[25..29].try_into().unwrap()),
        2,
        "map count"
    );
    assert_eq!(
        u64::from_le_bytes(out[29..37].try_into().unwrap()),
        9,
        "payload length"
    );
    assert_eq!(
        u64::from_le_bytes(out[37..45].try_into().unwrap()),
        65536,
        "offset"
    );
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[49..65]);
    crc.update(data);
    assert_eq!(
        u32::from_le_bytes(out[45..49].try_into().unwrap()),
        crc.finalize(),
        "CRC over map and data"
    );
    assert_eq!(&out[49..57], &[0, 0, 0, 0, 4, 0, 0, 0], "first map entry");
    assert_eq!(&out[65..], data);
}

const PAGE: usize = 16 * 1024;

/// A page-compressed tablespace as XtraBackup 8.0 streams it: each page's compressed bytes,
/// then a punched hole to the next page, the last hole trailing.
fn page_compressed(pages: usize, seed: u8) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut expected = vec![0u8; pages * PAGE];
    let mut page_data = Vec::new();
    for page in 0..pages {
        let len = 1000 + (page * 977 + seed as usize * 131) % 5000;
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ page as u8) | 1)
            .collect();
        expected[page * PAGE..page * PAGE + len].copy_from_slice(&bytes);
        page_data.push(bytes);
    }
    (page_data, expected)
}

/// Sparse chunks for `pages`, `per_chunk` pages a chunk, in stream order.
fn sparse_chunks(path: &str, pages: &[Vec<u8>], per_chunk: usize, out: &mut Vec<u8>) {
    for (c, group) in pages.chunks(per_chunk).enumerate() {
        let offset = (c * per_chunk * PAGE) as u64;
        let mut map = Vec::new();
        let mut data = Vec::new();
        let mut previous_end = 0usize;
        for (i, page) in group.iter().enumerate() {
            let skip = if i == 0 { 0 } else { PAGE - previous_end };
            map.push((skip as u32, page.len() as u32));
            data.extend_from_slice(page);
            previous_end = page.len();
        }
        // The hole after the group's last page, so the next chunk starts on a page boundary.
        map.push(((PAGE - previous_end) as u32, 0));
        Chunk::Sparse {
            path,
            offset,
            map: &map,
            data: &data,
        }
        .encode(out);
    }
}

#[test]
fn xtrabackup_streams_extract_byte_for_byte() {
    let (pages_a, expected_a) = page_compressed(12, 1);
    let (pages_b, expected_b) = page_compressed(5, 2);
    let ibdata: Vec<u8> = (0..WRITER_CHUNK_SIZE + 12345)
        .map(|i| (i % 253) as u8)
        .collect();

    // Two tablespaces interleaved, as with --parallel, around a plain file and an empty one.
    let mut a = Vec::new();
    sparse_chunks("db/a.ibd", &pages_a, 4, &mut a);
    let mut b = Vec::new();
    sparse_chunks("db/b.ibd", &pages_b, 2, &mut b);
    let mut stream = Vec::new();
    encode_file("ibdata1", &ibdata, &mut stream);
    let (a_chunks, b_chunks) = (split_chunks(&a), split_chunks(&b));
    for i in 0..a_chunks.len().max(b_chunks.len()) {
        for chunks in [&a_chunks, &b_chunks] {
            if let Some(chunk) = chunks.get(i) {
                stream.extend_from_slice(chunk);
            }
        }
    }
    Chunk::Eof { path: "db/b.ibd" }.encode(&mut stream);
    Chunk::Eof { path: "db/a.ibd" }.encode(&mut stream);
    encode_file("db/db.opt", b"default-character-set=utf8mb4\n", &mut stream);
    encode_file("xtrabackup_tablespaces", b"", &mut stream);

    let dir = tempfile::tempdir().unwrap();
    let summary =
        xbstream::extract(Decoder::new(Flavor::XtraBackup), dir.path(), &stream[..]).unwrap();
    assert_eq!(summary.files, 5);
    assert_eq!(fs::read(dir.path().join("ibdata1")).unwrap(), ibdata);
    assert_eq!(fs::read(dir.path().join("db/a.ibd")).unwrap(), expected_a);
    assert_eq!(fs::read(dir.path().join("db/b.ibd")).unwrap(), expected_b);
    assert_eq!(
        fs::read(dir.path().join("db/db.opt")).unwrap(),
        b"default-character-set=utf8mb4\n"
    );
    assert_eq!(
        fs::read(dir.path().join("xtrabackup_tablespaces")).unwrap(),
        b""
    );
    // Holes stay holes: the tablespace takes less disk than its length.
    let meta = fs::metadata(dir.path().join("db/a.ibd")).unwrap();
    assert!(
        meta.blocks() * 512 < meta.len(),
        "{} blocks for {} bytes",
        meta.blocks(),
        meta.len()
    );
}

/// Splits an encoded sequence of chunks back into one byte string per chunk.
fn split_chunks(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    while !bytes.is_empty() {
        let path_len = u32::from_le_bytes(bytes[10..14].try_into().unwrap()) as usize;
        let at = 14 + path_len;
        let entries = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap()) as usize;
        let total = at + 24 + entries * 8 + len;
        chunks.push(bytes[..total].to_vec());
        bytes = &bytes[total..];
    }
    chunks
}

#[test]
fn the_same_sparse_bytes_are_refused_as_a_mariadb_stream() {
    // 'S' is a seek in MariaDB: the flavor decides, and a mismatch is an error, not garbage.
    let (pages, _) = page_compressed(2, 3);
    let mut stream = Vec::new();
    sparse_chunks("db/a.ibd", &pages, 2, &mut stream);
    let dir = tempfile::tempdir().unwrap();
    assert!(xbstream::extract(Decoder::new(Flavor::MariaDb), dir.path(), &stream[..]).is_err());
}

/// Every seed of the decoder's fuzz target (fuzz/seeds/xbstream_decode: real streams, and
/// the hostile ones the adversarial run found) goes through the decoder without a panic; the
/// overflow seeds are refused.
#[test]
fn every_decoder_fuzz_seed_decodes_or_fails_cleanly() {
    use mysql_agent::protocol::{INFO_ENTRY, STATUS_ENTRY, stream_limit};
    use mysql_agent::xbstream::MemorySink;
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/xbstream_decode");
    let mut seen = 0;
    for entry in fs::read_dir(&seeds).unwrap() {
        let path = entry.unwrap().path();
        let bytes = fs::read(&path).unwrap();
        let Some((&selector, stream)) = bytes.split_first() else {
            continue;
        };
        let flavor = if selector & 1 == 0 {
            Flavor::MariaDb
        } else {
            Flavor::XtraBackup
        };
        let result = Decoder::new(flavor)
            .with_header(INFO_ENTRY)
            .with_trailer(STATUS_ENTRY)
            .with_limit_from_header(stream_limit)
            .decode(stream, &mut MemorySink::all(64 << 20));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("overflow-") {
            assert!(result.is_err(), "{name} was accepted");
        }
        seen += 1;
    }
    assert!(seen >= 9, "only {seen} seeds");
}
