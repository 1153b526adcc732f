#!/usr/bin/env bash
# Builds the fuzz seed corpus (fuzz/seeds/) from a real backup: a throwaway MariaDB on
# 127.0.0.99 is backed up with mariadb-backup; its metadata files become text seeds, and
# streams that mbstream itself writes from the backup's small files become stream seeds,
# along with the head of the real stream. Needs root and the packages of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'mariadb-admin --socket="$work/sock" -uroot shutdown 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/my.cnf" <<CNF
[mysqld]
user=root
datadir=$work/data
socket=$work/sock
pid-file=$work/pid
tmpdir=$work
bind-address=127.0.0.99
port=3306
log-bin=seed-bin
server-id=1
innodb_buffer_pool_size=32M
log-error=$work/err
CNF
mariadb-install-db --defaults-file="$work/my.cnf" --auth-root-authentication-method=normal --skip-test-db >/dev/null
mariadbd --defaults-file="$work/my.cnf" &
for _ in $(seq 100); do mariadb --socket="$work/sock" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
mariadb --socket="$work/sock" -uroot -e "CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO app.t VALUES (1,'one'),(2,'two')"
mariadb-backup --backup --stream=xbstream --slave-info --datadir="$work/data" --socket="$work/sock" --user=root >"$work/full.xbs" 2>"$work/backup.log"
mkdir "$work/x" && mbstream -x -C "$work/x" <"$work/full.xbs"

streams=seeds/xbstream_decode texts=seeds/text_parsers
rm -rf "$streams" "$texts" && mkdir -p "$streams" "$texts"
# A stream seed is a flavor byte (0 = MariaDB) followed by the stream.
seed() { { printf '\0'; cat; } >"$streams/$1"; }
head -c 4000 "$work/full.xbs" | seed real-stream-head
(cd "$work/x" && mbstream -c xtrabackup_checkpoints) | seed one-file
(cd "$work/x" && mbstream -c xtrabackup_info backup-my.cnf xtrabackup_binlog_info) | seed metadata
(cd "$work/x" && mbstream -c app/db.opt app/t.frm) | seed nested
(cd "$work/x" && : >empty && mbstream -c empty xtrabackup_checkpoints) | seed empty-file
for f in xtrabackup_binlog_info xtrabackup_checkpoints xtrabackup_info backup-my.cnf; do
    cp "$work/x/$f" "$texts/$f"
done
# The variants a MariaDB primary cannot produce here, as documented for the other tools.
printf "CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000001', MASTER_LOG_POS=2024;\n" >"$texts/slave-info-file-pos"
printf "SET GLOBAL gtid_slave_pos = '0-1-10';\nCHANGE MASTER TO master_use_gtid = slave_pos;\n" >"$texts/slave-info-mariadb-gtid"
printf "SET GLOBAL gtid_purged='c777888a-b6df-11e2-a604-080027635ef5:1-5,\nd8ad4fc4-b6df-11e2-a604-080027635ef5:1-3';\nCHANGE MASTER TO MASTER_AUTO_POSITION=1;\n" >"$texts/slave-info-mysql-gtid"
printf "mysql-bin.000003\t154\tc777888a-b6df-11e2-a604-080027635ef5:1-5,\nd8ad4fc4-b6df-11e2-a604-080027635ef5:1-3\n" >"$texts/binlog-info-multiline"
printf "status = completed\nstream_bytes = 17612712\ntool = mariadb-backup 10.11.19-MariaDB\n" >"$texts/stream-status"
printf "MYSQL-AGENT/1 BUSY already serving 1 backup(s); retry later" >"$texts/refusal"
printf "10.11.19-MariaDB-0+deb12u1-log" >"$texts/version"
echo "seeds: $(ls "$streams" | wc -l) streams, $(ls "$texts" | wc -l) texts"
