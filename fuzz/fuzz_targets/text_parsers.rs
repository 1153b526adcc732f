//! Every parser of text the agent reads from disk or the network: no panic on any input, and
//! coordinates that parse always turn into SQL without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mysql_agent::clone::Donor;
use mysql_agent::coordinates;
use mysql_agent::keyvalue;
use mysql_agent::metadata::BackupMetadata;
use mysql_agent::pod::PodIdentity;
use mysql_agent::protocol::{Message, StreamInfo, StreamStatus, stream_limit};
use mysql_agent::replication::{Session, Source, setup_statements};
use mysql_agent::server_version::ServerVersion;
use mysql_agent::secrets::Password;

fuzz_target!(|data: &[u8]| {
    let _ = StreamStatus::parse(data);
    let _ = StreamInfo::parse(data);
    let _ = stream_limit(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = coordinates::parse_binlog_info(text);
    let _ = coordinates::parse_slave_info(text);
    let _ = keyvalue::field(text, "backup_type");
    // The same text under every metadata file name, read as a backup's metadata.
    if let Ok(meta) = BackupMetadata::from_lookup(|_| Ok(Some(text.to_owned()))) {
        let _ = meta.backup_type();
        let _ = meta.check_full_backup();
        let _ = meta.coordinates();
        let _ = meta.info_field("server_version");
    }
    let _ = Message::parse(text);
    let _ = text.parse::<Donor>();
    let _ = ServerVersion::parse(text);
    let _ = PodIdentity::parse(text, "mysql");
    let source = Source {
        host: text.into(),
        port: 3306,
        user: text.into(),
        password: Password::new(text),
    };
    for coords in [
        coordinates::choose(Some(text), None),
        coordinates::choose(None, Some(text)),
    ]
    .into_iter()
    .flatten()
    .flatten()
    {
        for version in ["10.11.19-MariaDB", "5.7.44", "8.0.21", "8.0.22", "8.0.36", "8.4.3"] {
            let server = ServerVersion::parse(version).unwrap();
            for no_backslash_escapes in [false, true] {
                let session = Session {
                    no_backslash_escapes,
                    replication_account_needs_rsa_key: true,
                };
                let _ = setup_statements(&server, &coords.position, &source, &session);
            }
        }
    }
});
