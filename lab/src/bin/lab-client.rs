//! `lab-client`: the lab's load generator. It sends a bounded number of independent
//! requests (a new TCP connection or a new UDP socket, so a new source port, each) to
//! one target and reports which backends answered as JSON. With `--hold` it keeps one
//! TCP connection open across rounds instead, to show an established connection keeps
//! working. Failures are part of the result (exit 0); bad arguments exit 2. The target
//! may be IPv4 or IPv6; sockets are of the target's family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dpu_lab::traffic::{HoldFirst, TrafficResult};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// What each request sends.
const REQUEST: &[u8] = b"hi\n";
/// Longest answer line read.
const MAX_ANSWER: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

/// Send COUNT requests to TARGET and report which backends answered.
#[derive(Debug, Parser)]
#[command(name = "lab-client")]
struct Args {
    /// Where to send, as IP:PORT (IPv6 in brackets: [fd00:96::10]:80).
    #[arg(long)]
    target: SocketAddr,
    /// Transport.
    #[arg(long, value_enum)]
    proto: Proto,
    /// Number of requests (rounds after the first answer with --hold).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Time limit for each request, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Pause between requests, in milliseconds.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Bind request i to source port P+i instead of an ephemeral port.
    #[arg(long, value_name = "P")]
    src_port_base: Option<u16>,
    /// Send from these addresses (the namespace's own) in turn, request i
    /// from the (i mod n)-th, instead of the one the route picks. Repeat the
    /// option or separate them with commas.
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    src_ip: Vec<IpAddr>,
    /// Print JSON instead of a summary line.
    #[arg(long)]
    json: bool,
    /// TCP only: one connection for all rounds, first answer printed at once.
    #[arg(long)]
    hold: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(message) = validate(&args) {
        eprintln!("lab-client: {message}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lab-client: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        if args.hold {
            hold(&args).await
        } else {
            independent_requests(&args).await
        }
    });
    report(&args, &result);
    ExitCode::SUCCESS
}

fn validate(args: &Args) -> Result<(), String> {
    if args.timeout_ms == 0 {
        return Err("--timeout-ms must be positive".into());
    }
    if args.hold && args.proto != Proto::Tcp {
        return Err("--hold needs --proto tcp".into());
    }
    for ip in &args.src_ip {
        if ip.is_ipv4() != args.target.is_ipv4() {
            return Err(format!(
                "--src-ip {ip} is not of the family of {}",
                args.target
            ));
        }
    }
    if let Some(base) = args.src_port_base {
        let ports = if args.hold { 1 } else { u64::from(args.count) };
        if base == 0 || u64::from(base) + ports > 65536 {
            return Err(format!(
                "--src-port-base {base} with {ports} requests leaves the port range"
            ));
        }
    }
    Ok(())
}

fn report(args: &Args, result: &TrafficResult) {
    if args.json {
        match serde_json::to_string(result) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("lab-client: cannot encode the result: {e}"),
        }
        return;
    }
    let backends: Vec<String> = result
        .by_backend
        .iter()
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    println!(
        "ok={} failed={} backends: {}",
        result.ok,
        result.failed,
        backends.join(" ")
    );
    for error in &result.errors {
        eprintln!("lab-client: {error}");
    }
}

fn per_request(args: &Args) -> Duration {
    Duration::from_millis(args.timeout_ms)
}

/// The local address for a request to `target`: the unspecified address of the
/// target's family (`0.0.0.0` or `[::]`) and `port` (0 for an ephemeral one).
/// The source address of request `i`: the `--src-ip` addresses in turn.
fn source_ip(args: &Args, i: u32) -> Option<IpAddr> {
    (!args.src_ip.is_empty()).then(|| args.src_ip[i as usize % args.src_ip.len()])
}

fn source(target: SocketAddr, ip: Option<IpAddr>, port: u16) -> SocketAddr {
    let ip = ip.unwrap_or(match target.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    SocketAddr::new(ip, port)
}

async fn independent_requests(args: &Args) -> TrafficResult {
    let mut result = TrafficResult::default();
    for i in 0..args.count {
        if i > 0 && args.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
        // validate() keeps base + i inside the port range.
        let src_port = args.src_port_base.map(|base| base + i as u16);
        let src_ip = source_ip(args, i);
        let exchange = async {
            match args.proto {
                Proto::Tcp => tcp_request(args.target, src_ip, src_port).await,
                Proto::Udp => udp_request(args.target, src_ip, src_port).await,
            }
        };
        let outcome = with_timeout(per_request(args), exchange).await;
        result.record(outcome.map_err(|e| format!("request {i}: {e}")));
    }
    result
}

async fn with_timeout<F>(limit: Duration, exchange: F) -> Result<String, String>
where
    F: std::future::Future<Output = Result<String, String>>,
{
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", limit.as_millis())))
}

async fn connect(
    target: SocketAddr,
    src_ip: Option<IpAddr>,
    src_port: Option<u16>,
) -> Result<TcpStream, String> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if src_port.is_some() {
        socket
            .set_reuseaddr(true)
            .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    }
    if src_port.is_some() || src_ip.is_some() {
        let at = source(target, src_ip, src_port.unwrap_or(0));
        socket
            .bind(at)
            .map_err(|e| format!("bind source {at}: {e}"))?;
    }
    socket
        .connect(target)
        .await
        .map_err(|e| format!("connect to {target}: {e}"))
}

/// Reads one answer line and returns it without the line end.
async fn read_answer<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> Result<String, String> {
    let mut line = Vec::new();
    reader
        .take(MAX_ANSWER)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    answer_name(&line)
}

fn answer_name(bytes: &[u8]) -> Result<String, String> {
    if bytes.is_empty() {
        return Err("connection closed without an answer".into());
    }
    if !bytes.ends_with(b"\n") {
        return Err(format!(
            "incomplete answer {:?}",
            String::from_utf8_lossy(bytes)
        ));
    }
    let name = String::from_utf8_lossy(bytes).trim().to_owned();
    if name.is_empty() {
        return Err("empty answer".into());
    }
    Ok(name)
}

async fn tcp_request(
    target: SocketAddr,
    src_ip: Option<IpAddr>,
    src_port: Option<u16>,
) -> Result<String, String> {
    let mut stream = connect(target, src_ip, src_port).await?;
    stream
        .write_all(REQUEST)
        .await
        .map_err(|e| format!("send: {e}"))?;
    read_answer(&mut BufReader::new(&mut stream)).await
}

async fn udp_request(
    target: SocketAddr,
    src_ip: Option<IpAddr>,
    src_port: Option<u16>,
) -> Result<String, String> {
    let socket = UdpSocket::bind(source(target, src_ip, src_port.unwrap_or(0)))
        .await
        .map_err(|e| format!("bind: {e}"))?;
    // Connected, so only answers from the target itself count, as for a real client.
    socket
        .connect(target)
        .await
        .map_err(|e| format!("connect to {target}: {e}"))?;
    socket
        .send(REQUEST)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 2048];
    let n = socket
        .recv(&mut buf)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    answer_name(&buf[..n])
}

async fn hold(args: &Args) -> TrafficResult {
    let mut result = TrafficResult::default();
    let limit = per_request(args);
    let opened = tokio::time::timeout(limit, async {
        let stream = connect(args.target, source_ip(args, 0), args.src_port_base).await?;
        let (reader, mut writer) = stream.into_split();
        let mut reader = BufReader::new(reader);
        writer
            .write_all(REQUEST)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let first = read_answer(&mut reader).await?;
        Ok::<_, String>((reader, writer, first))
    })
    .await
    .unwrap_or_else(|_| Err(format!("no first answer within {} ms", limit.as_millis())));

    let (mut reader, mut writer) = match opened {
        Ok((reader, writer, first)) => {
            print_first(
                args,
                HoldFirst {
                    first: Some(first),
                    error: None,
                },
            );
            (reader, writer)
        }
        Err(e) => {
            print_first(
                args,
                HoldFirst {
                    first: None,
                    error: Some(e.clone()),
                },
            );
            for _ in 0..args.count {
                result.record(Err(format!("connection not established: {e}")));
            }
            return result;
        }
    };

    for round in 1..=args.count {
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        let exchange = async {
            writer
                .write_all(REQUEST)
                .await
                .map_err(|e| format!("send: {e}"))?;
            read_answer(&mut reader).await
        };
        match with_timeout(limit, exchange).await {
            Ok(backend) => result.record(Ok(backend)),
            Err(e) => {
                // A late answer would be read as the next round's: the connection is done.
                result.record(Err(format!("round {round}: {e}")));
                for later in round + 1..=args.count {
                    result.record(Err(format!(
                        "round {later}: connection broken in round {round}"
                    )));
                }
                break;
            }
        }
    }
    result
}

fn print_first(args: &Args, first: HoldFirst) {
    if args.json {
        match serde_json::to_string(&first) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("lab-client: cannot encode the first answer: {e}"),
        }
    } else {
        match (&first.first, &first.error) {
            (Some(backend), _) => println!("first answer: {backend}"),
            (None, error) => println!("no first answer: {}", error.as_deref().unwrap_or("?")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_targets_parse_and_bind_to_the_ipv6_any_address() {
        let args = Args::try_parse_from([
            "lab-client",
            "--target",
            "[fd00:96::10]:80",
            "--proto",
            "udp",
        ])
        .unwrap();
        assert_eq!(args.target, "[fd00:96::10]:80".parse().unwrap());
        assert_eq!(source(args.target, None, 0), "[::]:0".parse().unwrap());
        assert_eq!(
            source("10.96.0.10:80".parse().unwrap(), None, 4000),
            "0.0.0.0:4000".parse().unwrap()
        );
        assert_eq!(
            source(
                "10.96.0.10:80".parse().unwrap(),
                Some("10.0.0.7".parse().unwrap()),
                0
            ),
            "10.0.0.7:0".parse().unwrap()
        );
        assert!(validate(
            &Args::try_parse_from([
                "lab-client",
                "--target",
                "10.96.0.10:80",
                "--proto",
                "tcp",
                "--src-ip",
                "fd00::1",
            ])
            .unwrap()
        )
        .is_err());
        assert!(Args::try_parse_from([
            "lab-client",
            "--target",
            "fd00:96::10:80",
            "--proto",
            "tcp"
        ])
        .is_err());
    }
}
