//! `orbitctl replicate --detach` with several destinations: every destination is told to start
//! the fan-out and answers at once; orbitctl prints the transfer id and one line per
//! destination, and returns.

use std::sync::Arc;

use orbit_wire::{ControlEvent, TransferId};

use super::super::fanout_report::{self as show, Failure};
use super::super::tree::Output;
use super::super::ReplicateError;
use super::legs::{name_width, LegError, Legs, Report, Target};
use super::FanoutError;

/// Sends every destination its `StartFanout` and prints the transfer id, then one line per
/// destination as it answers.
pub(super) async fn detach(
    tls: Arc<rustls::ClientConfig>,
    transfer: TransferId,
    targets: Vec<Target>,
    output: Output,
) -> Result<(), FanoutError> {
    if !output.json && !output.quiet {
        println!("{transfer}");
    }
    let width = name_width(&targets);
    let mut legs = Legs::spawn(tls, &targets);
    let mut answered = vec![false; targets.len()];
    let mut failed = 0;
    while let Some(report) = legs.next().await {
        let Report::End(i, result, _) = report else {
            continue;
        };
        answered[i] = true;
        let star = targets[i].star.clone();
        let started = match result {
            Ok(ControlEvent::Started { transfer_id }) if transfer_id == transfer => Ok(()),
            Ok(ControlEvent::Failed(error)) => Err(ReplicateError::Failed { star, error }),
            Ok(other) => Err(ReplicateError::Unexpected {
                star,
                what: format!("{other:?}"),
            }),
            Err(leg) => Err(leg.into_replicate(&targets[i].star)),
        }
        .map_err(|e| Failure::of(&e));
        failed += usize::from(started.is_err());
        show_started(&targets[i], width, transfer, &started, output);
    }
    for (i, target) in targets.iter().enumerate().filter(|(i, _)| !answered[*i]) {
        let lost = Err(LegError::Lost.failure(&target.star));
        failed += 1;
        show_started(&targets[i], width, transfer, &lost, output);
    }
    if output.json {
        let started = targets.len() - failed;
        println!("{}", show::detached_json(transfer, started, failed));
    }
    match failed {
        0 => Ok(()),
        failed => Err(FanoutError::NotStarted {
            failed,
            total: targets.len(),
            id: transfer,
        }),
    }
}

fn show_started(
    target: &Target,
    width: usize,
    transfer: TransferId,
    started: &Result<(), Failure>,
    output: Output,
) {
    let path = target.path.as_deref().unwrap_or_default();
    if output.json {
        println!(
            "{}",
            show::started_json(transfer, &target.star, path, started)
        );
    } else if !output.quiet || started.is_err() {
        println!("{}", show::started_line(&target.name(), width, started));
    }
}

#[cfg(test)]
mod tests {
    use orbit_certs::GridCa;
    use orbit_wire::{ErrorCode, WireError};

    use super::super::legs::testing::{star, target, QUIET};
    use super::*;
    use crate::fake_star::controller_tls;

    #[tokio::test]
    async fn a_detached_fanout_needs_every_destination_started() {
        let ca = GridCa::generate("t").unwrap();
        let started = ControlEvent::Started {
            transfer_id: TransferId(0xf0),
        };
        let refused = ControlEvent::Failed(WireError::new(ErrorCode::AlreadyExists, "taken"));
        let b = star(&ca, "star-b", vec![started.clone()]).await;
        let c = star(&ca, "star-c", vec![started]).await;
        let d = star(&ca, "star-d", vec![refused]).await;
        let tls = controller_tls(&ca);
        let both = vec![target(&b, "star-b"), target(&c, "star-c")];
        detach(tls.clone(), TransferId(0xf0), both, QUIET)
            .await
            .unwrap();
        let all = vec![
            target(&b, "star-b"),
            target(&c, "star-c"),
            target(&d, "star-d"),
        ];
        let err = detach(tls, TransferId(0xf0), all, QUIET).await.unwrap_err();
        assert!(
            matches!(
                err,
                FanoutError::NotStarted {
                    failed: 1,
                    total: 3,
                    ..
                }
            ),
            "{err}"
        );
    }
}
