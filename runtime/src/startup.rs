//! `mynet run`: the start-up sequence of SPEC R1, each phase logged, each failure naming its
//! phase and cause.

use core::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use mynet_core::handshake::{Binding, Role, build_hello};
use mynet_core::wire::{self, Message};
use mynet_core::{Identity, Phase};
use mynet_storage::{FjallLog, Journaled, keyfile};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::content::Store;
use crate::datadir::{self, DataDir};
use crate::driver::{self, Clock, Driver, Facts};
use crate::transport::{NET_EVENTS_MAX, Transport};
use crate::{api, noise};

/// A start-up failure: the phase and the cause.
#[derive(Debug)]
pub struct StartupError {
    pub phase: Phase,
    pub cause: anyhow::Error,
}

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "start-up failed in phase {}: {:#}", self.phase, self.cause)
    }
}

fn phase<T>(phase: Phase, result: Result<T>) -> Result<T, StartupError> {
    result.map_err(|cause| StartupError { phase, cause })
}

fn announce(phase: Phase) {
    tracing::info!("phase {}/8: {phase}", driver::phase_number(phase));
}

/// Runs a node from `dir` until SIGINT/SIGTERM.
pub async fn run(dir: DataDir) -> Result<(), StartupError> {
    announce(Phase::CoreCheck);
    phase(Phase::CoreCheck, core_check())?;

    announce(Phase::Configuration);
    let layered = phase(Phase::Configuration, configure(&dir))?;
    let mut config = layered.config;
    let log = phase(
        Phase::Configuration,
        FjallLog::open(&dir.log_path()).map_err(|e| anyhow!("{e}; is another node running on this data dir?")),
    )?;

    announce(Phase::Cryptography);
    let identity = phase(Phase::Cryptography, crypto(&dir).await)?;
    tracing::info!("node id {}", identity.node_id());

    announce(Phase::NetworkServices);
    let listener = phase(Phase::NetworkServices, bind(config.listen_addr, "peer listener").await)?;
    let listen_addr = phase(Phase::NetworkServices, listener.local_addr().context("listener address"))?;
    let api_listener = phase(Phase::NetworkServices, bind(config.api_addr, "local API").await)?;
    let api_addr = phase(Phase::NetworkServices, api_listener.local_addr().context("API address"))?;
    let token = mynet_core::hex::encode(&datadir::os_random_32());
    phase(Phase::NetworkServices, write_api_files(&dir, api_addr, &token))?;
    tracing::info!("listening for peers on {listen_addr}; local API on http://{api_addr}");
    config.listen_addr = listen_addr;

    let (net_tx, net_rx) = mpsc::channel(NET_EVENTS_MAX);
    let (api_tx, api_rx) = mpsc::channel(64);
    let (store_tx, store_rx) = mpsc::unbounded_channel();
    let store = phase(Phase::Configuration, Store::open(&dir.store_path(), store_tx.clone()))?;
    let transport = Transport::new(net_tx, Duration::from_millis(config.handshake_timeout_ms)).dial_from(listen_addr);
    let _listener_task = transport.spawn_listener(listener);
    let metrics = crate::metrics::SharedMetrics::default();
    let _api_task =
        tokio::spawn(api::serve(api_listener, token, api_tx.clone(), store.shared(), metrics.clone(), dir.clone()));
    let _metrics_task = tokio::spawn(crate::metrics::run(metrics, api_tx, dir.root().to_path_buf()));

    let lan = if config.lan_discovery {
        let us = (identity.node_id(), config.network_id.clone());
        crate::lan::spawn(listen_addr, config.lan_interfaces.clone(), us, store_tx.clone())
    } else {
        None
    };
    if config.lan_discovery && lan.is_none() {
        tracing::info!("LAN discovery off: listening on {listen_addr}, which a LAN cannot reach");
    }
    let mut clock = Clock::starting_after(None);
    let mut outputs = Vec::new();
    let opened = Journaled::open(
        log,
        config,
        identity,
        datadir::os_random_u64(),
        |last| {
            clock = Clock::starting_after(last);
            clock.now()
        },
        &mut outputs,
    );
    let (journal, recovery) = phase(Phase::Bootstrap, opened.map_err(anyhow::Error::from))?;
    if recovery.records > 0 {
        tracing::info!(
            "continued from event log: {} records replayed, {} checkpoints verified",
            recovery.records,
            recovery.checkpoints
        );
    }
    if let Some(divergence) = &recovery.divergence {
        tracing::warn!(
            "event log replay diverged from the recorded run ({divergence}); this build behaves differently from the one that wrote the log"
        );
    }
    let facts =
        Facts { listen_addr, api_addr, data_dir: dir.root().display().to_string(), startup_time_ms: driver::wall_ms() };
    let node =
        phase(Phase::Bootstrap, Driver::new(journal, clock, transport, facts, outputs, store, store_tx))?.with_lan(lan);
    let result = node.run(net_rx, api_rx, store_rx, shutdown_signal()).await;
    let _ = std::fs::remove_file(dir.api_addr_path());
    result.map_err(|(phase, cause)| StartupError { phase, cause })
}

/// Checks the pure core works on this machine: framing and the handshake round-trip.
fn core_check() -> Result<()> {
    let probe = Identity::from_secret_bytes(&[0x5a; 32]);
    let hello =
        build_hello(&probe, Role::Initiator, Binding([1; 32]), "core-check", mynet_core::PROTOCOL_VERSION, 1, None);
    let frame =
        wire::encode_frame(&Message::Hello(hello.clone())).map_err(|e| anyhow!("frame encoding failed: {e}"))?;
    let decoded =
        wire::decode_body(&frame[wire::FRAME_HEADER_LEN..]).map_err(|e| anyhow!("frame round trip failed: {e}"))?;
    if decoded != Message::Hello(hello) {
        return Err(anyhow!("frame round trip changed the message"));
    }
    Ok(())
}

fn configure(dir: &DataDir) -> Result<mynet_core::config::Layered> {
    dir.ensure()?;
    dir.write_default_configs()?;
    let layered = dir.load_config()?;
    tracing::info!(
        "config: network {} protocol {} with {} bootstrap nodes",
        layered.config.network_id,
        layered.config.protocol_version,
        layered.config.bootstrap_nodes.len()
    );
    Ok(layered)
}

async fn crypto(dir: &DataDir) -> Result<Identity> {
    let (identity, created) = keyfile::load_or_create_key(&dir.key_path(), datadir::os_random_32)?;
    dir.write_node_id(&identity)?;
    if created {
        tracing::info!("generated a new identity in {}", dir.key_path().display());
    }
    identity.self_check().map_err(|e| anyhow!("signature {e}"))?;
    noise::self_check().await.map_err(|e| anyhow!("encryption self-check failed: {e}"))?;
    Ok(identity)
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for the {what}"))
}

fn write_api_files(dir: &DataDir, api_addr: SocketAddr, token: &str) -> Result<()> {
    keyfile::write_private(&dir.api_token_path(), format!("{token}\n").as_bytes(), true)
        .context("cannot write api.token")?;
    keyfile::write_private(&dir.api_addr_path(), format!("{api_addr}\n").as_bytes(), true)
        .context("cannot write api.addr")?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
