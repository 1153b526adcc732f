//! Every parser of text the agent reads from disk or the network: no panic on any input, and
//! coordinates that parse always turn into SQL without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mysql_agent::coordinates;
use mysql_agent::pod::PodIdentity;
use mysql_agent::protocol::StreamStatus;
use mysql_agent::protocol::Message;
use mysql_agent::replication::{ServerVersion, Session, Source, setup_statements};
use mysql_agent::secrets::Password;

fuzz_target!(|data: &[u8]| {
    let _ = StreamStatus::parse(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = coordinates::parse_binlog_info(text);
    let _ = coordinates::parse_slave_info(text);
    let _ = coordinates::parse_backup_type(text);
    let _ = Message::parse(text);
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
