//! Probes of the sandbox: what the plugin can reach, reported as event notes.

use std::io::Write;

use rekon_sdk::{EventType, Output};

/// What a probe found: every attempt's outcome, and whether any got through.
pub struct Findings {
    granted: bool,
    notes: Vec<String>,
}

impl Findings {
    fn new() -> Self {
        Self {
            granted: false,
            notes: Vec::new(),
        }
    }

    fn attempt<T>(
        &mut self,
        what: &str,
        result: std::io::Result<T>,
        describe: impl FnOnce(T) -> String,
    ) {
        match result {
            Ok(v) => {
                self.granted = true;
                self.notes
                    .push(format!("ACCESS GRANTED: {what}: {}", describe(v)));
            }
            Err(e) => self.notes.push(format!("{what}: {e}")),
        }
    }
}

/// Adds one event: `<prefix>Granted` (Warning) if any attempt succeeded, else
/// `<prefix>Denied` (Normal), its note listing every attempt.
pub fn report(out: Output, prefix: &str, findings: Findings) -> Output {
    let (event_type, verdict) = if findings.granted {
        (EventType::Warning, "Granted")
    } else {
        (EventType::Normal, "Denied")
    };
    out.event(
        event_type,
        format!("{prefix}{verdict}"),
        findings.notes.join("; "),
    )
}

/// Reads a file and lists the root directory.
pub fn filesystem() -> Findings {
    let mut f = Findings::new();
    f.attempt(
        "read /etc/hostname",
        std::fs::read_to_string("/etc/hostname"),
        |s| format!("{:?}", s.trim()),
    );
    f.attempt("list /", std::fs::read_dir("/"), |entries| {
        format!("{} entries", entries.count())
    });
    f
}

/// Connects to the usual API server port on loopback and binds a UDP socket.
pub fn sockets() -> Findings {
    let mut f = Findings::new();
    f.attempt(
        "tcp connect 127.0.0.1:6443",
        std::net::TcpStream::connect("127.0.0.1:6443"),
        |s| format!("{:?}", s.peer_addr()),
    );
    f.attempt(
        "udp bind 0.0.0.0:0",
        std::net::UdpSocket::bind("0.0.0.0:0"),
        |s| format!("{:?}", s.local_addr()),
    );
    f
}

/// `vars=<count> args=<list>`.
pub fn environment() -> String {
    format!(
        "vars={} args={:?}",
        std::env::vars().count(),
        std::env::args().collect::<Vec<_>>()
    )
}

/// Prints `total` bytes to stdout in 1 KiB lines, ignoring write errors (a host may close
/// or cap the stream); says how many bytes were accepted.
pub fn flood_stdout(total: u64) -> String {
    let line = [b'x'; 1023];
    let mut stdout = std::io::stdout().lock();
    let (mut accepted, mut failed) = (0u64, 0u64);
    let mut written = 0u64;
    while written < total {
        let chunk = usize::try_from((total - written).min(1024)).unwrap_or(1024);
        let mut bytes = line[..chunk.saturating_sub(1)].to_vec();
        bytes.push(b'\n');
        match stdout.write_all(&bytes) {
            Ok(()) => accepted += bytes.len() as u64,
            Err(_) => failed += 1,
        }
        written += bytes.len() as u64;
    }
    let _ = stdout.flush();
    format!("printed {written} bytes: {accepted} accepted, {failed} writes failed")
}
