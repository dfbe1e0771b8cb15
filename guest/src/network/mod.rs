//! The pod network RPCs: `UpdateInterface`, `UpdateRoutes`, `ListInterfaces`, `ListRoutes`,
//! `AddARPNeighbors` over route netlink, and `GetIPTables` / `SetIPTables` through the guest's
//! `iptables-save` / `iptables-restore` (as Kata's agent does).
//!
//! Kata's runtime configures the pod network through these calls before it creates the sandbox,
//! so their request and answer shapes follow Kata's agent: interfaces are found by MAC address,
//! masks are prefix lengths in decimal text, routes name their device, `scope` is the kernel's
//! numeric scope. Every request is validated in full before the kernel is touched, and a bad
//! field is named by its path in the request (`routes[2].gateway`).
//!
//! All netlink traffic goes through one socket guarded by one lock, so concurrent network RPCs
//! never interleave their read-modify-write sequences. The socket opens on first use, from a
//! blocking-pool thread: it belongs to the agent process's network namespace.

mod iptables;
mod links;
mod neighbours;
mod netlink;
mod parse;
mod routes;

use std::sync::{Arc, Mutex, PoisonError};

use protobuf::well_known_types::empty::Empty;
use vigil_protos::agent::{
    AddARPNeighborsRequest, GetIPTablesRequest, GetIPTablesResponse, Interfaces, Routes,
    SetIPTablesRequest, SetIPTablesResponse, UpdateInterfaceRequest, UpdateRoutesRequest,
};
use vigil_protos::types::Interface;

use crate::error::{invalid, GuestError, Result};
use iptables::run_program;
use links::{list_interfaces, update_interface, WantedInterface};
use neighbours::{add_neighbours, ParsedNeighbour};
use netlink::Netlink;
use routes::{list_routes, update_routes, ParsedRoute};

/// The network RPC backend: one route-netlink socket, opened on first use.
#[derive(Default)]
pub struct Network {
    netlink: Arc<Mutex<Option<Netlink>>>,
}

impl Network {
    /// A backend whose socket opens on the first call, in the agent process's namespace.
    pub fn new() -> Network {
        Network::default()
    }

    /// Runs `op` on the socket in a blocking thread (netlink calls block on the kernel).
    async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Netlink) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let slot = self.netlink.clone();
        tokio::task::spawn_blocking(move || {
            // A panic mid-sequence leaves at worst unread answers on the socket, which the
            // sequence-number check skips: the socket stays usable.
            let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if guard.is_none() {
                let socket = Netlink::open().map_err(|e| {
                    GuestError::Internal(format!("opening the route netlink socket: {e}"))
                })?;
                *guard = Some(socket);
            }
            op(guard.as_mut().expect("socket opened above"))
        })
        .await
        .map_err(|e| GuestError::Internal(format!("network task failed: {e}")))?
    }

    /// `UpdateInterface`: configures the link with the request's MAC (or, without one, its
    /// name) and answers the interface as the kernel now reports it.
    pub async fn update_interface(&self, req: UpdateInterfaceRequest) -> Result<Interface> {
        let iface = req
            .interface
            .into_option()
            .ok_or_else(|| invalid("interface", "missing"))?;
        let wanted = WantedInterface::parse(&iface)?;
        self.run(move |nl| update_interface(nl, &wanted)).await
    }

    /// `UpdateRoutes`: replaces the routes of the devices the request names, then answers the
    /// whole main table.
    pub async fn update_routes(&self, req: UpdateRoutesRequest) -> Result<Routes> {
        let routes = req
            .routes
            .into_option()
            .ok_or_else(|| invalid("routes", "missing"))?
            .Routes;
        // Syntax first, without the kernel; device names need the link list.
        let parsed = routes
            .iter()
            .enumerate()
            .map(|(i, r)| ParsedRoute::parse(i, r))
            .collect::<Result<Vec<_>>>()?;
        let routes = self.run(move |nl| update_routes(nl, &parsed)).await?;
        Ok(Routes {
            Routes: routes,
            ..Default::default()
        })
    }

    /// `ListInterfaces`: every link with its addresses.
    pub async fn list_interfaces(&self) -> Result<Interfaces> {
        let interfaces = self.run(list_interfaces).await?;
        Ok(Interfaces {
            Interfaces: interfaces,
            ..Default::default()
        })
    }

    /// `ListRoutes`: the main routing table, IPv4 then IPv6.
    pub async fn list_routes(&self) -> Result<Routes> {
        let routes = self.run(list_routes).await?;
        Ok(Routes {
            Routes: routes,
            ..Default::default()
        })
    }

    /// `AddARPNeighbors`: adds (or replaces) neighbour entries, permanent unless a state is
    /// given.
    pub async fn add_arp_neighbors(&self, req: AddARPNeighborsRequest) -> Result<Empty> {
        let neighbors = req
            .neighbors
            .into_option()
            .ok_or_else(|| invalid("neighbors", "missing"))?
            .ARPNeighbors;
        let parsed = neighbors
            .iter()
            .enumerate()
            .map(|(i, n)| ParsedNeighbour::parse(i, n))
            .collect::<Result<Vec<_>>>()?;
        self.run(move |nl| add_neighbours(nl, &parsed)).await?;
        Ok(Empty::new())
    }

    /// `GetIPTables`: the output of `iptables-save` (or `ip6tables-save`).
    pub async fn get_ip_tables(&self, req: GetIPTablesRequest) -> Result<GetIPTablesResponse> {
        let program = if req.is_ipv6 {
            "ip6tables-save"
        } else {
            "iptables-save"
        };
        let data = run_program(program, Vec::new()).await?;
        Ok(GetIPTablesResponse {
            data,
            ..Default::default()
        })
    }

    /// `SetIPTables`: feeds the request's rules to `iptables-restore` (or `ip6tables-restore`)
    /// and answers what it printed.
    pub async fn set_ip_tables(&self, req: SetIPTablesRequest) -> Result<SetIPTablesResponse> {
        let program = if req.is_ipv6 {
            "ip6tables-restore"
        } else {
            "iptables-restore"
        };
        let data = run_program(program, req.data).await?;
        Ok(SetIPTablesResponse {
            data,
            ..Default::default()
        })
    }
}
