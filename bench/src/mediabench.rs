//! `ferry-mediabench`: media upload and download throughput through a running node, beside the
//! floor measured in the same run on the same machine: a sequential write (+ fsync) and read of
//! the same bytes on the same disk, and a loopback socket copy.
//!
//! ```text
//! ferry-mediabench --target 127.0.0.1:7700 --dir <dir on the node's disk> [--sizes 1,100] [--runs 3]
//! ```
//! Sizes in MiB. Prints a JSON object: per size, MB/s medians (min, max) of every measurement.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Instant;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut v);
    v
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn stats(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    serde_json::json!({
        "median": v[v.len() / 2],
        "min": v[0],
        "max": v[v.len() - 1],
        "n": v.len(),
    })
}

fn disk_floor(dir: &std::path::Path, bytes: &[u8]) -> std::io::Result<(f64, f64)> {
    let path = dir.join("mediabench-floor.tmp");
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    let write = mbps(bytes.len(), t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut back = Vec::with_capacity(bytes.len());
    std::fs::File::open(&path)?.read_to_end(&mut back)?;
    let read = mbps(back.len(), t.elapsed().as_secs_f64());
    std::fs::remove_file(&path)?;
    Ok((write, read))
}

fn socket_floor(bytes: &[u8]) -> std::io::Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let n = bytes.len();
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < n {
            let k = s.read(&mut buf)?;
            if k == 0 {
                break;
            }
            got += k;
        }
        Ok(got)
    });
    let t = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.write_all(bytes)?;
    drop(s);
    let got = reader
        .join()
        .map_err(|_| std::io::Error::other("reader panicked"))??;
    Ok(mbps(got, t.elapsed().as_secs_f64()))
}

fn main() {
    let mut target: SocketAddr = "127.0.0.1:7700".parse().expect("addr");
    let mut dir = std::env::temp_dir();
    let mut sizes = vec![1usize, 100];
    let mut runs = 3usize;
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        let v = it.next().unwrap_or_default();
        match f.as_str() {
            "--target" => target = v.parse().expect("--target host:port"),
            "--dir" => dir = PathBuf::from(v),
            "--sizes" => {
                sizes = v
                    .split(',')
                    .map(|s| s.trim().parse().expect("--sizes in MiB"))
                    .collect()
            }
            "--runs" => runs = v.parse().expect("--runs"),
            _ => {
                eprintln!("ferry-mediabench: unknown flag {f}");
                std::process::exit(2);
            }
        }
    }
    let mut out = serde_json::Map::new();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    for mib in sizes {
        let len = mib << 20;
        let (mut up, mut down, mut dw, mut dr, mut sock) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            seed += 1;
            let bytes = data(len, seed);
            let id = *blake3::hash(&bytes).as_bytes();
            let mut c = ferry_sdk::Client::connect(target).expect("connect");
            let t = Instant::now();
            c.upload_blob(id, len as u64, &mut std::io::Cursor::new(&bytes))
                .expect("upload");
            up.push(mbps(len, t.elapsed().as_secs_f64()));
            let t = Instant::now();
            let back = c
                .download_verified(id, len as u64, 0, len as u64)
                .expect("download");
            down.push(mbps(len, t.elapsed().as_secs_f64()));
            assert_eq!(back.len(), len);
            let (w, r) = disk_floor(&dir, &bytes).expect("disk floor");
            dw.push(w);
            dr.push(r);
            sock.push(socket_floor(&bytes).expect("socket floor"));
        }
        out.insert(
            format!("{mib}MiB"),
            serde_json::json!({
                "upload_mbps": stats(up),
                "download_verified_mbps": stats(down),
                "disk_write_fsync_mbps": stats(dw),
                "disk_read_mbps": stats(dr),
                "loopback_copy_mbps": stats(sock),
            }),
        );
    }
    println!("{}", serde_json::Value::Object(out));
}
