//! What the generator reads about the process under load and the emulator: CPU time and peak
//! RSS from /proc, counters from bigquery-emulator's `/_emulator/stats` over loopback HTTP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// User + system CPU seconds of `pid` (`self` for this process), from /proc/PID/stat.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line, 12 and 13 after "pid (comm) ".
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) as f64 / ticks)
}

/// Peak resident set size of `pid` in MiB (VmHWM).
pub fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The 1-minute load average, to record the conditions of a run.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

/// Counters from bigquery-emulator at `127.0.0.1:port`.
pub struct Emulator {
    port: u16,
}

impl Emulator {
    /// `url` is `http://127.0.0.1:PORT[/...]`; any other host is refused.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://127.0.0.1:")
            .ok_or_else(|| format!("--emulator must be http://127.0.0.1:PORT, got {url}"))?;
        let port = rest
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("no port in {url}"))?;
        Ok(Self { port })
    }

    /// One counter of `GET /_emulator/stats`.
    pub fn counter(&self, name: &str) -> Result<u64, String> {
        let body = self.get("/_emulator/stats")?;
        let key = format!("\"{name}\":");
        let at = body
            .find(&key)
            .ok_or_else(|| format!("no {name} in {body}"))?;
        let digits: String = body[at + key.len()..]
            .chars()
            .skip_while(|c| c.is_whitespace())
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().map_err(|_| format!("bad {name} in {body}"))
    }

    fn get(&self, path: &str) -> Result<String, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("emulator 127.0.0.1:{}: {e}", self.port))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| e.to_string())?;
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        Ok(body.to_owned())
    }
}
