//! How to keep a message's content in PostgreSQL, measured (issue 31:
//! "chunked rows, or large objects — measure"). For each size, the same
//! messages are stored, read back and deleted three ways, each message in
//! its own transaction as the cluster's queue does:
//!
//! - `bytea`: one column of the message's row (what `PgStore` does);
//! - `chunks`: rows of 256 KiB in a table of their own, written with one
//!   `unnest` statement;
//! - `large object`: `lo_from_bytea`, its oid in the message's row.
//!
//! Run by `bench/pg_bodies.sh` against a primary with a synchronous standby;
//! prints messages per second and MB/s for each way (the median of three
//! rounds, the order of the ways turned each round), and each as a ratio of
//! `bytea`'s, measured in the same invocation.
//!
//! Usage: pg_bodies DATABASE_URL [SIZE,SIZE,...] [TOTAL_MB]

use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// Bytes per chunk row.
const CHUNK: usize = 256 * 1024;

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Bytea,
    Chunks,
    LargeObject,
}

impl Way {
    const ALL: [Way; 3] = [Way::Bytea, Way::Chunks, Way::LargeObject];

    fn name(self) -> &'static str {
        match self {
            Way::Bytea => "bytea",
            Way::Chunks => "chunks",
            Way::LargeObject => "large object",
        }
    }
}

/// Rounds of each way per size.
const ROUNDS: usize = 3;

/// The round whose write time is the median (its read and delete times with it).
fn median(mut timings: Vec<Timing>) -> Timing {
    timings.sort_by_key(|t| t.write);
    timings.swap_remove(timings.len() / 2)
}

/// Time to write, read and delete `count` messages one way.
struct Timing {
    write: Duration,
    read: Duration,
    delete: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(url) = args.get(1) else {
        eprintln!("usage: pg_bodies DATABASE_URL [SIZE,SIZE,...] [TOTAL_MB]");
        std::process::exit(2);
    };
    let sizes: Vec<usize> = args
        .get(2)
        .map(String::as_str)
        .unwrap_or("1k,100k,1m,10m")
        .split(',')
        .map(parse_size)
        .collect::<Result<_, _>>()?;
    let total_mb: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(200);

    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    create_tables(&client).await?;
    println!(
        "{:>8} {:>6} {:>13} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "size", "count", "way", "write/s", "write MB/s", "x bytea", "read MB/s", "x bytea"
    );
    for size in sizes {
        // At least 20 messages, at most `total_mb` of content, per way.
        let count = (total_mb * 1024 * 1024 / size.max(1)).clamp(20, 2000);
        let bodies: Vec<Vec<u8>> = (0..count).map(|i| mail_like(size, i as u64)).collect();
        // Each way ROUNDS times, the order turned each round (whichever runs
        // first warms the server for the others); the median round counts.
        let mut rounds: Vec<Vec<Timing>> = Way::ALL.iter().map(|_| Vec::new()).collect();
        for round in 0..ROUNDS {
            for k in 0..Way::ALL.len() {
                let i = (k + round) % Way::ALL.len();
                rounds[i].push(run(&client, Way::ALL[i], &bodies).await?);
            }
        }
        let mut baseline: Option<Timing> = None;
        for (way, timings) in Way::ALL.into_iter().zip(rounds) {
            let t = median(timings);
            let mb = (size * count) as f64 / 1e6;
            let (write_ratio, read_ratio) = match &baseline {
                Some(b) => (
                    b.write.as_secs_f64() / t.write.as_secs_f64(),
                    b.read.as_secs_f64() / t.read.as_secs_f64(),
                ),
                None => (1.0, 1.0),
            };
            println!(
                "{:>8} {:>6} {:>13} {:>10.0} {:>9.1} {:>8.2}x {:>9.1} {:>8.2}x   (delete {:.0}/s)",
                show_size(size),
                count,
                way.name(),
                count as f64 / t.write.as_secs_f64(),
                mb / t.write.as_secs_f64(),
                write_ratio,
                mb / t.read.as_secs_f64(),
                read_ratio,
                count as f64 / t.delete.as_secs_f64(),
            );
            if way == Way::Bytea {
                baseline = Some(t);
            }
        }
    }
    client
        .batch_execute("DROP TABLE bench_bytea, bench_message, bench_chunk, bench_lo")
        .await?;
    Ok(())
}

async fn create_tables(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "DROP TABLE IF EXISTS bench_bytea, bench_message, bench_chunk, bench_lo;
             CREATE TABLE bench_bytea (id bigint PRIMARY KEY, body bytea NOT NULL);
             CREATE TABLE bench_message (id bigint PRIMARY KEY, size bigint NOT NULL);
             CREATE TABLE bench_chunk (id bigint NOT NULL REFERENCES bench_message ON DELETE CASCADE,
                                       seq int NOT NULL, data bytea NOT NULL, PRIMARY KEY (id, seq));
             CREATE TABLE bench_lo (id bigint PRIMARY KEY, content oid NOT NULL);",
        )
        .await
}

/// Writes every body (one transaction each), reads each back (checking it
/// came back whole), deletes each.
async fn run(
    client: &Client,
    way: Way,
    bodies: &[Vec<u8>],
) -> Result<Timing, Box<dyn std::error::Error>> {
    let started = Instant::now();
    for (id, body) in bodies.iter().enumerate() {
        write(client, way, id as i64, body).await?;
    }
    let write_time = started.elapsed();
    let started = Instant::now();
    for (id, body) in bodies.iter().enumerate() {
        let back = read(client, way, id as i64).await?;
        if back != *body {
            return Err(format!("{}: message {id} came back different", way.name()).into());
        }
    }
    let read_time = started.elapsed();
    let started = Instant::now();
    for id in 0..bodies.len() {
        delete(client, way, id as i64).await?;
    }
    Ok(Timing {
        write: write_time,
        read: read_time,
        delete: started.elapsed(),
    })
}

async fn write(
    client: &Client,
    way: Way,
    id: i64,
    body: &[u8],
) -> Result<(), tokio_postgres::Error> {
    match way {
        Way::Bytea => {
            client
                .execute("INSERT INTO bench_bytea VALUES ($1, $2)", &[&id, &body])
                .await?;
        }
        Way::Chunks => {
            client.batch_execute("BEGIN").await?;
            client
                .execute(
                    "INSERT INTO bench_message VALUES ($1, $2)",
                    &[&id, &(body.len() as i64)],
                )
                .await?;
            let chunks: Vec<&[u8]> = body.chunks(CHUNK).collect();
            let seqs: Vec<i32> = (0..chunks.len() as i32).collect();
            client
                .execute(
                    "INSERT INTO bench_chunk SELECT $1, s, d FROM unnest($2::int4[], $3::bytea[]) AS c(s, d)",
                    &[&id, &seqs, &chunks],
                )
                .await?;
            client.batch_execute("COMMIT").await?;
        }
        Way::LargeObject => {
            client
                .execute(
                    "INSERT INTO bench_lo VALUES ($1, lo_from_bytea(0, $2))",
                    &[&id, &body],
                )
                .await?;
        }
    }
    Ok(())
}

async fn read(client: &Client, way: Way, id: i64) -> Result<Vec<u8>, tokio_postgres::Error> {
    Ok(match way {
        Way::Bytea => client
            .query_one("SELECT body FROM bench_bytea WHERE id = $1", &[&id])
            .await?
            .get(0),
        Way::Chunks => {
            let rows = client
                .query(
                    "SELECT data FROM bench_chunk WHERE id = $1 ORDER BY seq",
                    &[&id],
                )
                .await?;
            let mut body = Vec::new();
            for row in &rows {
                body.extend_from_slice(row.get::<_, &[u8]>(0));
            }
            body
        }
        Way::LargeObject => client
            .query_one("SELECT lo_get(content) FROM bench_lo WHERE id = $1", &[&id])
            .await?
            .get(0),
    })
}

async fn delete(client: &Client, way: Way, id: i64) -> Result<(), tokio_postgres::Error> {
    let sql = match way {
        Way::Bytea => "DELETE FROM bench_bytea WHERE id = $1",
        Way::Chunks => "DELETE FROM bench_message WHERE id = $1",
        Way::LargeObject => {
            "WITH gone AS (DELETE FROM bench_lo WHERE id = $1 RETURNING content)
             SELECT lo_unlink(content) FROM gone"
        }
    };
    client.execute(sql, &[&id]).await?;
    Ok(())
}

/// Content like mail's: headers, then base64 lines of pseudo-random bytes
/// (an attachment), which compress as little as real ones do.
fn mail_like(size: usize, seed: u64) -> Vec<u8> {
    use base64::Engine;
    let mut out = format!("Subject: message {seed}\r\nContent-Transfer-Encoding: base64\r\n\r\n")
        .into_bytes();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < size {
        let mut raw = [0u8; 57];
        for b in raw.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(raw)
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
    }
    out.truncate(size);
    out
}

fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim().to_ascii_lowercase();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text.as_str(), ""),
    };
    let n: usize = digits.parse().map_err(|_| format!("not a size: {text}"))?;
    Ok(n * match unit {
        "" => 1,
        "k" => 1024,
        "m" => 1024 * 1024,
        _ => return Err(format!("not a size: {text} (use k or m)")),
    })
}

fn show_size(size: usize) -> String {
    if size >= 1024 * 1024 {
        format!("{}M", size / (1024 * 1024))
    } else if size >= 1024 {
        format!("{}K", size / 1024)
    } else {
        size.to_string()
    }
}
