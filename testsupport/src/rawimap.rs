//! Just enough IMAP to seed a test mailbox without the client under test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::bail;

/// Just enough IMAP to seed a mailbox from a test without the client under
/// test: LOGIN, APPEND with a synchronizing literal, plain commands.
pub(crate) struct RawImap {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
}

impl RawImap {
    pub(crate) fn login(port: u16, user: &str, password: &str) -> anyhow::Result<RawImap> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut imap = RawImap {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            tag: 0,
        };
        let greeting = imap.line()?;
        if !greeting.starts_with("* OK") {
            bail!("unexpected greeting {greeting:?}");
        }
        imap.command(&format!("LOGIN \"{user}\" \"{password}\""))?;
        Ok(imap)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("IMAP connection closed");
        }
        Ok(line.trim_end().to_owned())
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("t{}", self.tag)
    }

    fn finish(&mut self, tag: &str) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = self.line()?;
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                if rest.starts_with("OK") {
                    return Ok(lines);
                }
                bail!("IMAP said {line:?}");
            }
            lines.push(line);
        }
    }

    pub(crate) fn command(&mut self, cmd: &str) -> anyhow::Result<Vec<String>> {
        let tag = self.next_tag();
        write!(self.writer, "{tag} {cmd}\r\n")?;
        self.finish(&tag)
    }

    pub(crate) fn append(&mut self, folder: &str, raw: &[u8]) -> anyhow::Result<()> {
        let tag = self.next_tag();
        write!(
            self.writer,
            "{tag} APPEND \"{folder}\" {{{}}}\r\n",
            raw.len()
        )?;
        let cont = self.line()?;
        if !cont.starts_with('+') {
            bail!("APPEND to {folder} refused: {cont:?}");
        }
        self.writer.write_all(raw)?;
        self.writer.write_all(b"\r\n")?;
        self.finish(&tag).map(|_| ())
    }

    /// Appends all of `raws` in one MULTIAPPEND (RFC 3502) with
    /// non-synchronizing literals (LITERAL+, RFC 7888): one transaction and
    /// no round trip per message.
    pub(crate) fn append_many(&mut self, folder: &str, raws: &[Vec<u8>]) -> anyhow::Result<()> {
        if raws.is_empty() {
            return Ok(());
        }
        let tag = self.next_tag();
        let mut out = format!("{tag} APPEND \"{folder}\"").into_bytes();
        for raw in raws {
            out.extend_from_slice(format!(" {{{}+}}\r\n", raw.len()).as_bytes());
            out.extend_from_slice(raw);
        }
        out.extend_from_slice(b"\r\n");
        self.writer.write_all(&out)?;
        self.finish(&tag).map(|_| ())
    }

    pub(crate) fn logout(&mut self) -> anyhow::Result<()> {
        let tag = self.next_tag();
        write!(self.writer, "{tag} LOGOUT\r\n")?;
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
        Ok(())
    }
}

/// Waits until an IMAP server on 127.0.0.1:`port` answers with its
/// greeting: a listening socket alone is not yet a server that serves
/// (Cyrus's master binds before its `imapd` can answer).
pub fn wait_for_greeting(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let mut last = String::from("nothing listens");
    while start.elapsed() < timeout {
        match greeting(port) {
            Ok(line) if line.starts_with("* OK") => return Ok(()),
            Ok(line) => last = format!("greeting {line:?}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no IMAP greeting on 127.0.0.1:{port} after {timeout:?} ({last})")
}

fn greeting(port: u16) -> anyhow::Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let _ = (&stream).write_all(b"x LOGOUT\r\n");
    Ok(line.trim_end().to_owned())
}

/// The UIDVALIDITY in a SELECT response.
pub(crate) fn uidvalidity_of(lines: &[String]) -> anyhow::Result<u32> {
    use anyhow::Context;
    lines
        .iter()
        .find_map(|l| {
            let rest = l.split("[UIDVALIDITY ").nth(1)?;
            rest.split(']').next()?.trim().parse().ok()
        })
        .context("no UIDVALIDITY in the SELECT response")
}
