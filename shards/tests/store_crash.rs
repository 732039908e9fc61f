//! kill -9 durability of the log (FsyncPolicy::Always): a child process appends and acks,
//! printing each operation only after the log returned it as durable; the parent SIGKILLs the
//! child, reopens the log and checks that every acknowledged blob is there exactly once and every
//! acknowledged ack stuck, that recovery found no damage, and that every file left is a segment
//! with mode 0600 (the parent runs with umask 0, so the mode is the store's own).
//!
//! Two phases: random kills (several rounds reuse one directory, so recovery also runs over
//! segments left by earlier crashes), then one kill at each step of a segment's creation: the
//! child's backend SIGKILLs its own process from the step hook.
//!
//! A plain `main` (harness = false): the same binary is the child when FERRY_STORE_CRASH_DIR is set.

// A real child process: its timing is measured in real time.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use ferry_proto::Dest;
use ferry_shards::store::backend::{CreateStep, MmapBackend};
use ferry_shards::store::{FsyncPolicy, Log, Recovery, StoreLimits};

const NOW: u64 = 1_800_000_000;
const DESTS: u64 = 7;

/// Small segments, so that the child rolls to new ones often.
fn limits(segment_bytes: usize) -> StoreLimits {
    StoreLimits {
        segment_bytes,
        ..StoreLimits::default()
    }
}

fn dest(i: u64) -> Dest {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&(i % DESTS).to_le_bytes());
    Dest(d)
}

fn payload(msg_id: u64) -> Vec<u8> {
    (0..(msg_id % 500 + 1))
        .map(|i| (msg_id as u8) ^ (i as u8))
        .collect()
}

/// Child: append blobs from `start`, ack every third one right after, forever. With `kill_at`,
/// the process SIGKILLs itself at that step of its second segment creation (the first holds
/// acknowledged blobs by then).
fn child(dir: &str, start: u64, segment_bytes: usize, kill_at: Option<CreateStep>) {
    let mut creations = 0u32;
    let backend = MmapBackend::new(Path::new(dir))
        .unwrap()
        .with_step_hook(move |step| {
            if step == CreateStep::ALL[0] {
                creations += 1;
            }
            if creations == 2 && Some(step) == kill_at {
                kill_9_self();
            }
        });
    let (mut log, _) =
        Log::open(backend, 0, limits(segment_bytes), FsyncPolicy::Always, NOW).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    for msg_id in start.. {
        let a = log
            .append(NOW, dest(msg_id), msg_id, 3_600, &payload(msg_id))
            .unwrap();
        writeln!(out, "ACK {msg_id} {}", a.pos.to_u64()).unwrap();
        out.flush().unwrap();
        if msg_id % 3 == 0 {
            assert!(log.ack(NOW, &dest(msg_id), a.pos).unwrap());
            writeln!(out, "DEL {msg_id}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[allow(unsafe_code)]
fn kill_9_self() -> ! {
    // SAFETY: kill(2) and getpid(2) on this process; SIGKILL cannot be caught, so nothing of
    // this process runs after it (the loop only keeps the type honest).
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    loop {
        std::thread::park();
    }
}

/// What the parent learned from the children's lines.
#[derive(Default)]
struct Ledger {
    /// msg_id → position of every blob acknowledged as stored.
    stored: BTreeMap<u64, u64>,
    /// Acknowledged acks.
    deleted: BTreeSet<u64>,
    /// The next message id a child starts from.
    next: u64,
}

impl Ledger {
    fn apply(&mut self, line: &str) {
        let mut it = line.split(' ');
        match (it.next(), it.next(), it.next()) {
            (Some("ACK"), Some(id), Some(pos)) => {
                let id: u64 = id.parse().unwrap();
                self.stored.insert(id, pos.parse().unwrap());
                self.next = self.next.max(id + 1);
            }
            (Some("DEL"), Some(id), None) => {
                self.deleted.insert(id.parse().unwrap());
            }
            _ => panic!("child said {line:?}"),
        }
    }
}

fn spawn(
    dir: &Path,
    start: u64,
    segment_bytes: usize,
    kill_at: Option<usize>,
) -> (std::process::Child, Receiver<String>) {
    let me = std::env::current_exe().unwrap();
    let mut cmd = Command::new(me);
    cmd.env("FERRY_STORE_CRASH_DIR", dir)
        .env("FERRY_STORE_CRASH_START", start.to_string())
        .env("FERRY_STORE_CRASH_SEGMENT_BYTES", segment_bytes.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(k) = kill_at {
        cmd.env("FERRY_STORE_CRASH_STEP", k.to_string());
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), "READY");
    (child, rx)
}

/// Reopens the log after a kill and checks it against the ledger; returns what recovery found.
fn verify(dir: &Path, label: &str, ledger: &mut Ledger, segment_bytes: usize) -> Recovery {
    let (log, rec) = Log::open(
        MmapBackend::new(dir).unwrap(),
        0,
        limits(segment_bytes),
        FsyncPolicy::Always,
        NOW,
    )
    .unwrap();
    let files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        (rec.bad_segments, rec.empty_segments),
        (0, 0),
        "{label}: damaged segments after kill -9: {rec:?}; files {files:?}"
    );
    for name in &files {
        assert!(
            name.starts_with("seg-") && name.ends_with(".log"),
            "{label}: {name} left behind"
        );
        let mode = std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{label}: {name} has mode {mode:o}");
    }
    let mut present: BTreeMap<u64, u64> = BTreeMap::new();
    for d in 0..DESTS {
        for (e, p) in log.drain(&dest(d), NOW) {
            assert_eq!(p, &payload(e.msg_id)[..], "blob {} corrupted", e.msg_id);
            assert!(
                present.insert(e.msg_id, e.pos.to_u64()).is_none(),
                "blob {} twice",
                e.msg_id
            );
        }
    }
    // The one ack that may have been in flight at the kill: the newest acknowledged blob, if
    // the child acks it (every third) and had not yet said so. Either outcome is correct.
    if let Some(&last) = ledger.stored.keys().next_back() {
        if last % 3 == 0 && !ledger.deleted.contains(&last) && !present.contains_key(&last) {
            ledger.deleted.insert(last);
        }
    }
    for (id, pos) in &ledger.stored {
        if ledger.deleted.contains(id) {
            assert!(
                !present.contains_key(id),
                "{label}: acked blob {id} came back"
            );
        } else {
            assert_eq!(
                present.get(id),
                Some(pos),
                "{label}: durable blob {id} lost; recovery {rec:?}; files {files:?}"
            );
        }
    }
    for id in present.keys() {
        // Only the one append in flight at the kill may be there unannounced.
        assert!(
            ledger.stored.contains_key(id) || *id == ledger.next,
            "{label}: unknown blob {id}"
        );
    }
    println!(
        "{label}: {} acknowledged, {} acked away, {} present after kill -9; recovery {rec:?}",
        ledger.stored.len(),
        ledger.deleted.len(),
        present.len()
    );
    // The append in flight at the kill, if it landed, is now a stored blob like any other.
    for (id, pos) in &present {
        ledger.stored.entry(*id).or_insert(*pos);
    }
    // Continue after whatever the child had in flight.
    ledger.next = present
        .keys()
        .next_back()
        .map_or(ledger.next, |m| (*m + 1).max(ledger.next))
        + 1;
    rec
}

fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Kills at random moments, several rounds over one directory.
fn random_kills() {
    const SEGMENT_BYTES: usize = 128 * 1024;
    let dir = fresh_dir("crash");
    let mut ledger = Ledger::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    for round in 0..8 {
        let (mut child, rx) = spawn(&dir, ledger.next, SEGMENT_BYTES, None);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_for = Duration::from_millis(50 + seed % 250);
        let t = Instant::now();
        while t.elapsed() < run_for {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(5)) {
                ledger.apply(&line);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines already written before the kill are acknowledgements too.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            ledger.apply(&line);
        }
        verify(&dir, &format!("round {round}"), &mut ledger, SEGMENT_BYTES);
    }
    assert!(
        ledger.stored.len() > 10,
        "the child made too little progress to test anything"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One kill at each step of a segment's creation: nothing or a valid segment is left, and a
/// temporary only before the rename (removed by the next open).
fn kills_at_each_creation_step() {
    const SEGMENT_BYTES: usize = 64 * 1024;
    for (k, step) in CreateStep::ALL.iter().enumerate() {
        let dir = fresh_dir(&format!("crash-step-{k}"));
        let mut ledger = Ledger::default();
        let (mut child, rx) = spawn(&dir, 0, SEGMENT_BYTES, Some(k));
        // The child dies on its own, at the step; its lines end with it.
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
            ledger.apply(&line);
        }
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "{step:?}: child ended with {status}"
        );
        let label = format!("killed after {step:?}");
        let rec = verify(&dir, &label, &mut ledger, SEGMENT_BYTES);
        let before_rename = *step < CreateStep::Renamed;
        assert_eq!(
            rec.temporaries,
            usize::from(before_rename),
            "{label}: {rec:?}"
        );
        // One full segment, plus the new one once it was renamed into place.
        assert_eq!(
            rec.segments,
            1 + usize::from(!before_rename),
            "{label}: {rec:?}"
        );
        assert!(ledger.stored.len() > 10, "{label}: no segment was filled");
        // Recovery is done: the next start finds nothing to clean.
        let rec = verify(
            &dir,
            &format!("{label}, reopened"),
            &mut ledger,
            SEGMENT_BYTES,
        );
        assert_eq!(rec.temporaries, 0, "{label}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn main() {
    if let Ok(dir) = std::env::var("FERRY_STORE_CRASH_DIR") {
        let var = |name: &str| std::env::var(name).unwrap().parse::<u64>().unwrap();
        let kill_at = std::env::var("FERRY_STORE_CRASH_STEP")
            .ok()
            .map(|k| CreateStep::ALL[k.parse::<usize>().unwrap()]);
        let segment_bytes = usize::try_from(var("FERRY_STORE_CRASH_SEGMENT_BYTES")).unwrap();
        child(&dir, var("FERRY_STORE_CRASH_START"), segment_bytes, kill_at);
        return;
    }
    // The store sets its files' modes itself; with umask 0 a forgotten mode shows as 0666.
    set_umask_zero();
    random_kills();
    kills_at_each_creation_step();
    println!("2 passed, 0 failed");
}

#[allow(unsafe_code)]
fn set_umask_zero() {
    // SAFETY: umask(2) only sets this process's file mode mask and cannot fail.
    unsafe {
        libc::umask(0);
    }
}
