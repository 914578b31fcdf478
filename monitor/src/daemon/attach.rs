//! Attaching the program to the interfaces, pinning links with `--persist`, and adopting the
//! links a previous daemon pinned (the running program is replaced atomically with
//! `bpf_link_update`, so traffic is never unprotected during an upgrade).
//!
//! Link pins live beside the map pins: `<pin-path>/link_<hook>_<iface>`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::programs::{
    TcAttachType,
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    xdp::{XdpLink, XdpMode},
};
use log::{info, warn};

use crate::{
    config::{AttachKind, Settings, XdpModeSetting},
    kernel::Kernel,
    proto::Attachment,
};

const LINK_PREFIX: &str = "link_";

fn link_pin(pin_dir: &Path, hook: AttachKind, iface: &str) -> PathBuf {
    pin_dir.join(format!("{LINK_PREFIX}{}_{iface}", hook.as_str()))
}

/// Link pins of the wrong hook or of interfaces no longer configured: the operator changed the
/// settings, so those attachments go.
fn remove_stale_links(settings: &Settings) {
    let wanted: Vec<PathBuf> = settings
        .ifaces
        .iter()
        .map(|i| link_pin(&settings.pin_path, settings.attach, i))
        .collect();
    let Ok(entries) = std::fs::read_dir(&settings.pin_path) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_link = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(LINK_PREFIX));
        if is_link && !wanted.contains(&path) {
            match std::fs::remove_file(&path) {
                Ok(()) => info!("detached {} (no longer configured)", path.display()),
                Err(e) => warn!("could not remove stale link pin {}: {e}", path.display()),
            }
        }
    }
}

/// Attaches to every configured interface. Returns what was attached and how.
pub fn attach_all(kernel: &mut Kernel, settings: &Settings) -> Result<Vec<Attachment>> {
    remove_stale_links(settings);
    let mut out = Vec::new();
    for iface in &settings.ifaces {
        let pin = link_pin(&settings.pin_path, settings.attach, iface);
        if pin.exists() {
            match adopt(kernel, settings.attach, &pin) {
                Ok(()) => {
                    info!(
                        "{iface}: adopted the pinned {} link; the new program replaced the old one atomically",
                        settings.attach
                    );
                    out.push(Attachment {
                        iface: iface.clone(),
                        hook: settings.attach.to_string(),
                        mode: "adopted".into(),
                        adopted: true,
                    });
                    continue;
                }
                Err(e) => {
                    warn!(
                        "{iface}: could not adopt {} ({e:#}); attaching afresh",
                        pin.display()
                    );
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let mode = match settings.attach {
            AttachKind::Xdp => attach_xdp(
                kernel,
                iface,
                settings.xdp_mode,
                settings.persist.then_some(&pin),
            )?,
            AttachKind::Tc => attach_tc(kernel, iface, settings.persist.then_some(&pin))?,
        };
        info!("{iface}: attached {} ({mode})", settings.attach);
        out.push(Attachment {
            iface: iface.clone(),
            hook: settings.attach.to_string(),
            mode,
            adopted: false,
        });
    }
    Ok(out)
}

fn adopt(kernel: &mut Kernel, hook: AttachKind, pin: &Path) -> Result<()> {
    let fd_link: FdLink = PinnedLink::from_pin(pin)
        .context("opening the pinned link")?
        .into();
    match hook {
        AttachKind::Xdp => {
            let link = XdpLink::try_from(fd_link).context("not an XDP link")?;
            kernel
                .xdp()?
                .attach_to_link(link)
                .context("replacing the program")?;
        }
        AttachKind::Tc => {
            let link = SchedClassifierLink::try_from(fd_link).context("not a TC link")?;
            kernel
                .tc()?
                .attach_to_link(link)
                .context("replacing the program")?;
        }
    }
    Ok(())
}

fn attach_xdp(
    kernel: &mut Kernel,
    iface: &str,
    mode: XdpModeSetting,
    pin: Option<&PathBuf>,
) -> Result<String> {
    let xdp = kernel.xdp()?;
    let (id, got) = match mode {
        XdpModeSetting::Native => (
            xdp.attach(iface, XdpMode::Driver)
                .with_context(|| format!("attaching XDP (native) to {iface}"))?,
            "native",
        ),
        XdpModeSetting::Skb => (
            xdp.attach(iface, XdpMode::Skb)
                .with_context(|| format!("attaching XDP (skb) to {iface}"))?,
            "skb",
        ),
        XdpModeSetting::Auto => match xdp.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                let e = anyhow::Error::from(e);
                warn!("{iface}: native XDP refused ({e:#}); falling back to generic (skb) XDP");
                (
                    xdp.attach(iface, XdpMode::Skb)
                        .with_context(|| format!("attaching XDP (skb) to {iface}"))?,
                    "skb",
                )
            }
        },
    };
    if let Some(pin) = pin {
        let link = xdp.take_link(id)?;
        let fd_link =
            FdLink::try_from(link).context("XDP link is not a bpf_link; cannot pin it")?;
        fd_link
            .pin(pin)
            .with_context(|| format!("pinning the link at {}", pin.display()))?;
    }
    Ok(got.to_string())
}

fn attach_tc(kernel: &mut Kernel, iface: &str, pin: Option<&PathBuf>) -> Result<String> {
    let tc = kernel.tc()?;
    let id = tc
        .attach(iface, TcAttachType::Ingress)
        .with_context(|| format!("attaching TC ingress to {iface}"))?;
    if let Some(pin) = pin {
        let link = tc.take_link(id)?;
        let fd_link =
            FdLink::try_from(link).context("TC link is not a bpf_link (tcx); cannot pin it")?;
        fd_link
            .pin(pin)
            .with_context(|| format!("pinning the link at {}", pin.display()))?;
    }
    Ok("tcx ingress".to_string())
}

/// Removes every link pin (a clean stop without `--persist`): with the daemon's own link fds
/// closing too, the programs leave the interfaces.
pub fn remove_link_pins(pin_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(pin_dir) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(LINK_PREFIX))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
