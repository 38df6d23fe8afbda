//! `GET /v1/follow-config` (`pinmesh follow-config`): the cluster's follow configuration,
//! signed by this agent (see [`crate::follow`]).

use axum::Json;
use axum::extract::State;
use libp2p::Multiaddr;

use super::{ApiError, ApiState, swarm_info};
use crate::follow::{BOOTSTRAP_MAX, FollowConfig};
use crate::net::with_peer;

/// Refused, with one line, on a cluster without trusted writers and by an agent that is not
/// one of them (its signature would vouch for nothing). The bootstrap addresses are this
/// agent's own, then those of the members it is connected to.
pub async fn follow_config(State(state): State<ApiState>) -> Result<Json<FollowConfig>, ApiError> {
    let writers = &state.follow.trusted_writers;
    if writers.is_empty() {
        return Err(ApiError::Conflict(
            "this cluster has no cluster.trusted_writers: anyone with the secret may write, so \
             a follower would not be read-only; set trusted_writers on every member first"
                .into(),
        ));
    }
    if !state.writer {
        let named: Vec<String> = writers.iter().map(ToString::to_string).collect();
        return Err(ApiError::Forbidden(format!(
            "this agent is not a trusted writer, so its signature vouches for nothing: ask one \
             of {}",
            named.join(", ")
        )));
    }
    let info = swarm_info(&state).await?;
    let own = (info.listen.iter()).map(|a| with_peer(a.clone(), &info.peer_id));
    let members = (info.peers.iter())
        .filter(|p| p.connected)
        .filter_map(|p| Some(with_peer(p.addrs.first()?.clone(), &p.peer_id)));
    let bootstrap: Vec<Multiaddr> = own.chain(members).take(BOOTSTRAP_MAX).collect();
    let now = crate::replica::now_ms() / 1000;
    Ok(Json(FollowConfig::issue(
        &state.follow.signer.0,
        &state.cluster,
        &state.follow.secret,
        &bootstrap,
        writers,
        now,
    )))
}
