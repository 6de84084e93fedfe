//! A case's undo list: how to undo each thing the case made, booked by the
//! family that makes it, at the moment it makes it.
//!
//! A step books its undo *before* its request goes out, so a request that
//! fails half-way is still undone; a step that undoes a fault itself (a
//! heal, a restore, a cable plugged back) strikes its entries off. The
//! case's cleanup plays what is left in reverse (see [`UndoList::in_cleanup_order`]),
//! and knows nothing of the families: each entry says which call undoes it.

use crate::lab::outside::OutsideFault;
use faultlab_proto::v1 as pb;

/// How to undo one thing a case made on one role's host.
#[derive(Clone, Debug)]
pub(crate) struct Undo {
    /// The role whose host has it.
    pub role: String,
    /// What may still be in place if the undo is not confirmed, for a
    /// report: `isolation "c1-cut-…"`.
    pub what: String,
    /// Who undoes it, and how.
    pub by: UndoBy,
}

/// Who undoes a fault: the agent on its host, or the host's lab from
/// outside (whichever made it).
#[derive(Clone, Debug)]
pub(crate) enum UndoBy {
    Agent(AgentUndo),
    /// The lab plugs the cable back at the switch side, or switches the
    /// power back on.
    Lab(OutsideFault),
}

/// The agent call that undoes a fault.
#[derive(Clone, Debug)]
pub(crate) enum AgentUndo {
    /// Kill the case's holder: its connections (and any flood it sends) go.
    KillHolder(pb::KillHolderRequest),
    /// Lift an isolation.
    Heal(pb::HealRequest),
    /// Restore a degradation.
    Restore(pb::RestoreRequest),
    /// Bring the test link up again (pulled by the agent, in the host).
    LinkUp(pb::LinkUpRequest),
    /// Thaw a frozen application.
    Thaw(pb::ProcessFaultRequest),
    /// Put a TCP setting back.
    PutBackTcpSetting(pb::PutBackTcpSettingRequest),
}

impl Undo {
    /// An undo by the role's agent.
    pub fn by_agent(role: &str, what: String, call: AgentUndo) -> Self {
        Self {
            role: role.to_owned(),
            what,
            by: UndoBy::Agent(call),
        }
    }

    /// An undo by the role's lab.
    pub fn by_lab(role: &str, what: String, fault: OutsideFault) -> Self {
        Self {
            role: role.to_owned(),
            what,
            by: UndoBy::Lab(fault),
        }
    }

    /// Whether this undoes a pulled cable (however it was pulled).
    fn plugs_a_cable(&self) -> bool {
        matches!(
            self.by,
            UndoBy::Agent(AgentUndo::LinkUp(_)) | UndoBy::Lab(OutsideFault::Cable)
        )
    }

    /// Whether this switches a host back on.
    fn switches_power_on(&self) -> bool {
        matches!(self.by, UndoBy::Lab(OutsideFault::Power))
    }
}

/// What a case has made and not yet undone, in the order it made it.
#[derive(Debug, Default)]
pub(crate) struct UndoList(Vec<Undo>);

impl UndoList {
    /// Book an undo (before the fault is made).
    pub fn book(&mut self, undo: Undo) {
        self.0.push(undo);
    }

    /// Book a cable's or a power cut's undo, replacing the one its role
    /// already has (a cable pulled twice is plugged back once).
    pub fn book_once(&mut self, undo: Undo) {
        let same = |booked: &Undo| {
            booked.role == undo.role
                && (booked.plugs_a_cable() && undo.plugs_a_cable()
                    || booked.switches_power_on() && undo.switches_power_on())
        };
        self.0.retain(|booked| !same(booked));
        self.0.push(undo);
    }

    /// The ids of the isolations on `role`'s host not lifted yet.
    pub fn isolations_of(&self, role: &str) -> Vec<String> {
        self.of(role)
            .filter_map(|undo| match &undo.by {
                UndoBy::Agent(AgentUndo::Heal(heal)) => Some(heal.id.clone()),
                _ => None,
            })
            .collect()
    }

    /// The ids of the degradations on `role`'s host not restored yet.
    pub fn degradations_of(&self, role: &str) -> Vec<String> {
        self.of(role)
            .filter_map(|undo| match &undo.by {
                UndoBy::Agent(AgentUndo::Restore(restore)) => Some(restore.id.clone()),
                _ => None,
            })
            .collect()
    }

    /// The isolations `ids` were lifted.
    pub fn healed(&mut self, ids: &[String]) {
        self.0.retain(
            |undo| !matches!(&undo.by, UndoBy::Agent(AgentUndo::Heal(heal)) if ids.contains(&heal.id)),
        );
    }

    /// The degradations `ids` were restored.
    pub fn restored(&mut self, ids: &[String]) {
        self.0.retain(|undo| {
            !matches!(&undo.by, UndoBy::Agent(AgentUndo::Restore(restore)) if ids.contains(&restore.id))
        });
    }

    /// `role`'s cable is plugged back in.
    pub fn plugged(&mut self, role: &str) {
        self.0
            .retain(|undo| !(undo.role == role && undo.plugs_a_cable()));
    }

    /// `role`'s host has power again.
    pub fn powered_on(&mut self, role: &str) {
        self.0
            .retain(|undo| !(undo.role == role && undo.switches_power_on()));
    }

    /// `role`'s frozen application runs again (or was stopped another way).
    pub fn thawed(&mut self, role: &str) {
        self.0.retain(|undo| {
            !(undo.role == role && matches!(undo.by, UndoBy::Agent(AgentUndo::Thaw(_))))
        });
    }

    /// The roles whose hosts are without power.
    pub fn powered_off(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(|undo| undo.switches_power_on())
            .map(|undo| undo.role.as_str())
    }

    /// What is left, in the order cleanup plays it: the reverse of the
    /// order it was made in, except that hosts get their power back first
    /// (nothing else on a host can be confirmed while it is off, a cable
    /// plugged back least of all: its host's kernel must see the carrier).
    pub fn in_cleanup_order(&self) -> impl Iterator<Item = &Undo> {
        let power = |undo: &&Undo| undo.switches_power_on();
        let reversed = || self.0.iter().rev();
        reversed()
            .filter(power)
            .chain(reversed().filter(move |undo| !power(undo)))
    }

    fn of<'a>(&'a self, role: &'a str) -> impl Iterator<Item = &'a Undo> {
        self.0.iter().filter(move |undo| undo.role == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heal(role: &str, id: &str) -> Undo {
        Undo::by_agent(
            role,
            format!("isolation {id:?}"),
            AgentUndo::Heal(pb::HealRequest {
                id: id.to_owned(),
                all: false,
            }),
        )
    }

    fn order(list: &UndoList) -> Vec<String> {
        list.in_cleanup_order()
            .map(|undo| format!("{}:{}", undo.role, undo.what))
            .collect()
    }

    #[test]
    fn cleanup_plays_the_list_backwards_with_power_first() {
        let mut list = UndoList::default();
        list.book(Undo::by_agent(
            "client",
            "holder 1".to_owned(),
            AgentUndo::KillHolder(pb::KillHolderRequest { holder_id: 1 }),
        ));
        list.book(Undo::by_lab(
            "server",
            "cable".to_owned(),
            OutsideFault::Cable,
        ));
        list.book(heal("client", "cut"));
        list.book(Undo::by_lab(
            "server",
            "power".to_owned(),
            OutsideFault::Power,
        ));
        assert_eq!(
            order(&list),
            [
                "server:power",
                "client:isolation \"cut\"",
                "server:cable",
                "client:holder 1"
            ]
        );
    }

    #[test]
    fn a_step_that_undoes_strikes_off_only_its_own() {
        let mut list = UndoList::default();
        list.book(heal("client", "a"));
        list.book(heal("server", "b"));
        list.book(Undo::by_lab(
            "server",
            "cable".to_owned(),
            OutsideFault::Cable,
        ));
        list.book(Undo::by_agent(
            "client",
            "cable".to_owned(),
            AgentUndo::LinkUp(pb::LinkUpRequest::default()),
        ));
        assert_eq!(list.isolations_of("server"), ["b"]);
        list.healed(&list.isolations_of("server"));
        list.plugged("client");
        assert_eq!(order(&list), ["server:cable", "client:isolation \"a\""]);
        list.plugged("server");
        list.healed(&["a".to_owned()]);
        assert_eq!(list.in_cleanup_order().count(), 0);
    }

    #[test]
    fn a_cable_pulled_twice_is_plugged_back_once() {
        let mut list = UndoList::default();
        list.book_once(Undo::by_lab(
            "server",
            "first".to_owned(),
            OutsideFault::Cable,
        ));
        list.book_once(Undo::by_lab(
            "client",
            "other".to_owned(),
            OutsideFault::Cable,
        ));
        list.book_once(Undo::by_lab(
            "server",
            "second".to_owned(),
            OutsideFault::Cable,
        ));
        list.book_once(Undo::by_lab(
            "server",
            "power".to_owned(),
            OutsideFault::Power,
        ));
        assert_eq!(
            order(&list),
            ["server:power", "server:second", "client:other"]
        );
        assert_eq!(list.powered_off().collect::<Vec<_>>(), ["server"]);
    }
}
