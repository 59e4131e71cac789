//! `bench-null-relay`: the floor of a userspace TUN tunnel, for `slicenet-bench` (section 4).
//!
//! Relays IP packets between a TUN device and one UDP peer with no encryption, no header and no
//! batching: one thread waits in poll(2) on both fds and moves one packet per system call each
//! way (a TUN read and a `sendto`; a `recvfrom` and a TUN write). Whatever a tunnel built on TUN
//! and a UDP socket adds to the round trip of a small packet, this adds at least (the wake-ups
//! and the system calls), so its row says how much of the gateway's added RTT any userspace
//! tunnel pays on this machine. `--spin` polls without sleeping (a vCPU per relay, for a one-off
//! measurement of what the wake-ups cost; never left running: the bench stops it).
//!
//! Usage: `bench-null-relay --tun NAME --listen ADDR:PORT --peer ADDR:PORT [--spin]`; the
//! caller gives the device its address and MTU and sets it up.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use slice_gateway::tun::Tun;

struct Args {
    tun: String,
    listen: SocketAddr,
    peer: SocketAddr,
    spin: bool,
}

fn parse() -> Result<Args> {
    let (mut tun, mut listen, mut peer, mut spin) = (None, None, None, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--tun" => tun = Some(value()?),
            "--listen" => listen = Some(value()?.parse().context("--listen")?),
            "--peer" => peer = Some(value()?.parse().context("--peer")?),
            "--spin" => spin = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(Args {
        tun: tun.context("--tun is required")?,
        listen: listen.context("--listen is required")?,
        peer: peer.context("--peer is required")?,
        spin,
    })
}

fn relay(args: &Args) -> Result<()> {
    let tun = Tun::create_plain(&args.tun).with_context(|| format!("TUN {}", args.tun))?;
    let udp = UdpSocket::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    udp.set_nonblocking(true)?;
    let mut fds = [
        libc::pollfd { fd: tun.queue_fd(0), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: udp.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    let timeout = if args.spin { 0 } else { -1 };
    let mut buf = vec![0u8; 65_536];
    loop {
        // SAFETY: two valid pollfds that live across the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) } < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("poll");
        }
        // Drain both every time round (in spin mode poll reports nothing; reading tells).
        loop {
            match tun.try_recv(0, &mut buf) {
                Ok(n) => {
                    if let Err(e) = udp.send_to(&buf[..n], args.peer)
                        && e.kind() != ErrorKind::WouldBlock
                    {
                        return Err(e).context("sendto");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("reading TUN"),
            }
        }
        loop {
            match udp.recv_from(&mut buf) {
                // Only the peer's datagrams; a lost write (a full queue) is a lost packet.
                Ok((n, from)) if from == args.peer => {
                    let _ = tun.send(&buf[..n]);
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("recvfrom"),
            }
        }
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-null-relay: {e:#}");
            return ExitCode::from(2);
        }
    };
    match relay(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-null-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}
