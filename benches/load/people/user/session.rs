//! One connected stretch of a person's life: what it plans (typing, sends, reads, churn,
//! retries) and what it does with each frame, until it drops, leaves, is lost or the run ends.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::RngExt;
use rand::rngs::StdRng;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::conv::Conv;
use super::frames::{Asked, In, SendOut};
use super::{Ended, World};
use crate::client::{Ws, encode, frame};
use crate::people::events::{Count, Timed};
use crate::tally::{aim, now_us};

pub(super) struct Session<'a> {
    pub(super) world: &'a World,
    pub(super) me: Uuid,
    /// `me` as the frames spell it.
    pub(super) me_text: String,
    pub(super) me_idx: u32,
    pub(super) node: String,
    pub(super) convs: &'a mut Vec<Conv>,
    pub(super) by_id: &'a mut HashMap<Uuid, usize>,
    pub(super) rng: &'a mut StdRng,
    pub(super) next_id: u64,
    pub(super) asked: HashMap<u64, Asked>,
    pub(super) catching: Option<CatchUp>,
    /// When the server last ended a connection of this user, until a catch-up has followed.
    pub(super) lost_at: &'a mut Option<u64>,
}

/// A catch-up in progress (after a reconnect, or the run's last check): over when the list
/// pages it asked are answered and every conversation holds what they said it has
/// ([`Conv::owed`]), however its messages came (a fetch of the catch-up's, a gap fetch already
/// in flight, pushes).
pub(super) struct CatchUp {
    /// Since when (0: the last check, not timed).
    from: u64,
    /// List pages asked and not yet answered (a refused one is still owed: it is asked again).
    lists: usize,
}

/// What the session plans to do next, and when.
pub(super) struct Plans {
    typing_at: u64,
    typing_repeat_at: u64,
    send_at: u64,
    /// The conversation of the coming send (chosen when typing starts).
    conv: Option<usize>,
    abandon: bool,
    /// Reads to send: (when, conversation).
    reads: Vec<(u64, usize)>,
    churn_at: u64,
    leave: bool,
    /// A list to ask again (it was refused; whether a catch-up waits for it), and history
    /// fetches to ask again.
    retry_list_at: u64,
    retry_list_counted: bool,
    retry_history: Vec<(u64, usize)>,
}

impl Plans {
    /// When the session next has something to do: the earliest of its plans, the talk's only
    /// while `talking_until` (the window's end) is given, and never later than `until`. The
    /// typing of the coming send is no longer a plan once it has started (a time in the past
    /// here would wake the task at every tick of the timer until the send: 1–4 s of spinning a
    /// message, which had made the generator cost more CPU than the nodes and delayed every
    /// frame it read).
    fn next_wake(&self, until: u64, talking_until: Option<u64>) -> u64 {
        let retries = self.retry_history.iter().map(|(at, _)| *at);
        let mut wake = retries.fold(until.min(self.retry_list_at), u64::min);
        if let Some(end) = talking_until {
            let typing = if self.conv.is_none() {
                self.typing_at
            } else {
                u64::MAX
            };
            let reads = self.reads.iter().map(|(at, _)| *at);
            wake = reads.fold(
                wake.min(typing)
                    .min(self.typing_repeat_at)
                    .min(self.send_at)
                    .min(self.churn_at)
                    .min(end),
                u64::min,
            );
        }
        wake
    }
}

impl Session<'_> {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    async fn ask(&mut self, ws: &mut Ws, mut req: serde_json::Value, what: Asked) -> bool {
        let id = self.id();
        req["id"] = json!(id);
        self.asked.insert(id, what);
        ws.send(frame(&req)).await.is_ok()
    }

    /// Asks for a page of the list; `counted` when a catch-up waits for it (the caller counts
    /// it in `CatchUp::lists`).
    async fn list(&mut self, ws: &mut Ws, first: bool, before: Option<u64>, counted: bool) -> bool {
        let at = now_us();
        let mut req = json!({"t": "conversations", "limit": 200});
        if let Some(b) = before {
            req["before"] = json!(b);
        }
        self.ask(ws, req, Asked::List { first, at, counted }).await
    }

    /// Starts a catch-up (`from` 0: the last check) with its first list page; one already
    /// running is joined, its pages still awaited.
    async fn catch_up(&mut self, ws: &mut Ws, from: u64, first: bool) -> bool {
        let lists = self.catching.as_ref().map_or(0, |c| c.lists);
        self.catching = Some(CatchUp {
            from,
            lists: lists + 1,
        });
        self.list(ws, first, None, true).await
    }

    /// Ends the catch-up once nothing it waits for is outstanding.
    fn check_caught_up(&mut self) {
        let Some(c) = &self.catching else {
            return;
        };
        if c.lists > 0 || self.convs.iter().any(Conv::owing) {
            return;
        }
        if c.from > 0 {
            let now = now_us();
            self.world.time_at(Timed::Reconnect, c.from, now);
            if let Some(lost) = self.lost_at.take() {
                self.world.time_at(Timed::Failover, lost, now);
            }
        }
        self.catching = None;
        for conv in self.convs.iter_mut() {
            conv.owed = 0;
        }
    }

    /// Asks for what follows `mark`; the answer must reach `want` (or the newest held above
    /// it, or what a catch-up is owed).
    async fn history_after(&mut self, ws: &mut Ws, conv: usize, want: u64) -> bool {
        let c = &mut self.convs[conv];
        let want = c
            .ahead
            .last()
            .copied()
            .unwrap_or(c.mark)
            .max(want)
            .max(c.owed);
        c.fetching = Some(want);
        let req = json!({"t": "history", "conv": c.id.to_string(), "after": c.mark, "limit": 200});
        let at = now_us();
        self.ask(ws, req, Asked::History { conv, at }).await
    }

    fn exp_us(&mut self, per_minute: f64) -> u64 {
        if per_minute <= 0.0 {
            return u64::MAX / 2;
        }
        let u: f64 = self.rng.random_range(1e-12..1.0);
        (-u.ln() * 60e6 / per_minute) as u64
    }

    fn plan_send(&mut self, p: &mut Plans, from: u64) {
        let plan = &self.world.plan;
        p.send_at = from.saturating_add(self.exp_us(plan.msgs_per_user_min));
        let lead = self.rng.random_range(1_000_000..4_000_000);
        p.typing_at = p.send_at.saturating_sub(lead).max(from);
        p.typing_repeat_at = u64::MAX;
        p.conv = None;
        p.abandon = self.rng.random_bool(0.1);
    }

    /// Serves one connection until it ends; a send still unanswered then, unless the run is
    /// over, was cut off with its connection: its `sent` went nowhere (counted, so that every
    /// send is either answered or accounted for).
    pub(super) async fn run(
        mut self,
        ws: Ws,
        started: u64,
        first: bool,
        reconnect_from: Option<u64>,
    ) -> Ended {
        let ended = self.serve(ws, started, first, reconnect_from).await;
        if !matches!(ended, Ended::Over) {
            for asked in self.asked.values() {
                if let Asked::Send { scheduled, .. } = asked {
                    self.world.count_at(Count::SendsCutOff, *scheduled);
                }
            }
        }
        ended
    }

    async fn serve(
        &mut self,
        mut ws: Ws,
        started: u64,
        first: bool,
        reconnect_from: Option<u64>,
    ) -> Ended {
        let world = self.world;
        let plan = &world.plan;
        let is_agent = world.pop.agent[self.me_idx as usize];
        // what was in flight on the last connection died with it
        for c in self.convs.iter_mut() {
            c.fetching = None;
            c.owed = 0;
        }
        let asked = match reconnect_from {
            Some(from) => self.catch_up(&mut ws, from, first).await,
            None => self.list(&mut ws, first, None, false).await,
        };
        if !asked {
            return Ended::Lost;
        }
        let mut connect_timed = false;
        let now = now_us();
        let mut p = Plans {
            typing_at: 0,
            typing_repeat_at: u64::MAX,
            send_at: 0,
            conv: None,
            abandon: false,
            reads: Vec::new(),
            churn_at: u64::MAX,
            leave: false,
            retry_list_at: u64::MAX,
            retry_list_counted: false,
            retry_history: Vec::new(),
        };
        self.plan_send(&mut p, now.max(plan.ramp_start_us + plan.ramp_us));
        let drop_after = self.exp_us(plan.drop_per_min / 100.0);
        let leave_after = if is_agent {
            u64::MAX / 2
        } else {
            self.exp_us(plan.leave_per_min / 100.0)
        };
        p.leave = leave_after < drop_after;
        // churn only once everyone is on
        p.churn_at = now
            .max(plan.ramp_start_us + plan.ramp_us)
            .saturating_add(drop_after.min(leave_after));
        // The last catch-up is spread out, as users would not all open their app in one instant
        // (a herd of lists would measure the herd, and leave users unchecked): at the ramp's
        // pace, which the run says the cluster takes for a list and its pages, and at most
        // 500 users a second.
        let drain_until = plan.end_us + 3_000_000;
        let spread = (plan.shape.users as u64 * 2_000).max(plan.ramp_us);
        let final_at = drain_until + self.rng.random_range(0..spread.max(1_000_000));
        let mut final_check = false;
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut body_pad = String::new();
        loop {
            let now = now_us();
            if !final_check && now >= final_at {
                // the run is over: one last catch-up, then hold what is held
                final_check = true;
                if !self.catch_up(&mut ws, 0, false).await {
                    return Ended::Lost;
                }
            }
            if final_check && self.catching.is_none() {
                self.settle();
                let _ = ws.close(None).await;
                return Ended::Over;
            }
            if final_check && now > final_at + 60_000_000 {
                // what it holds is not known: it is left out of the check, and counted
                world.count(Count::FinalCheckUnfinished);
                let _ = ws.close(None).await;
                return Ended::Over;
            }
            let talking = now < plan.end_us && !self.convs.is_empty();
            let until = if final_check {
                now + 1_000_000
            } else {
                final_at
            };
            let wake = p.next_wake(until, talking.then_some(plan.end_us));
            aim(timer.as_mut(), wake, now);
            tokio::select! {
                _ = &mut timer => {
                    let now = now_us();
                    world.count_at(Count::TimerWakes, now);
                    if now >= p.retry_list_at {
                        p.retry_list_at = u64::MAX;
                        if !self.list(&mut ws, first, None, p.retry_list_counted).await {
                            return Ended::Lost;
                        }
                        continue;
                    }
                    if let Some(k) = p.retry_history.iter().position(|(at, _)| *at <= now) {
                        let (_, conv) = p.retry_history.swap_remove(k);
                        if self.convs[conv].fetching.is_none()
                            && !self.history_after(&mut ws, conv, 0).await
                        {
                            return Ended::Lost;
                        }
                        continue;
                    }
                    if !talking {
                        continue;
                    }
                    if now >= p.churn_at {
                        if p.leave {
                            let _ = ws.close(None).await;
                            return Ended::Left;
                        }
                        // no close frame: the socket just goes away, as on a network change
                        drop(ws);
                        return Ended::Dropped;
                    }
                    if let Some(k) = p.reads.iter().position(|(at, _)| *at <= now) {
                        let (_, conv) = p.reads.swap_remove(k);
                        if !self.read(&mut ws, conv).await {
                            return Ended::Lost;
                        }
                        continue;
                    }
                    if p.conv.is_none() && now >= p.typing_at {
                        let conv = self.rng.random_range(0..self.convs.len());
                        p.conv = Some(conv);
                        if !self.typing(&mut ws, conv, true).await {
                            return Ended::Lost;
                        }
                        if p.send_at.saturating_sub(now) > 3_000_000 {
                            p.typing_repeat_at = now + 3_000_000;
                        }
                        continue;
                    }
                    if now >= p.typing_repeat_at {
                        p.typing_repeat_at = u64::MAX;
                        if let Some(conv) = p.conv
                            && !self.typing(&mut ws, conv, true).await
                        {
                            return Ended::Lost;
                        }
                        continue;
                    }
                    if now >= p.send_at {
                        let scheduled = p.send_at;
                        let conv = p.conv.unwrap_or(0);
                        if p.abandon {
                            world.count_at(Count::TypingAbandoned, scheduled);
                            if !self.typing(&mut ws, conv, false).await {
                                return Ended::Lost;
                            }
                        } else {
                            // opening the conversation to write in it reads it
                            if self.convs[conv].unread_to > self.convs[conv].read_to
                                && !self.read(&mut ws, conv).await
                            {
                                return Ended::Lost;
                            }
                            if !self.send(&mut ws, conv, scheduled, &mut body_pad).await {
                                return Ended::Lost;
                            }
                        }
                        self.plan_send(&mut p, scheduled);
                    }
                }
                msg = ws.next() => {
                    let Some(Ok(msg)) = msg else { return Ended::Lost };
                    let Message::Binary(bytes) = &msg else { continue };
                    let Ok(f) = rmp_serde::from_slice::<In>(bytes) else { continue };
                    let now = now_us();
                    if f.t == "conversations" && !connect_timed {
                        // every connect is timed, the ramp's too
                        connect_timed = true;
                        world.events.borrow_mut().time(Timed::Connect, now.saturating_sub(started));
                    }
                    if self.on_frame(&mut ws, f, now, &mut p).await.is_err() {
                        return Ended::Lost;
                    }
                }
            }
        }
    }

    async fn typing(&mut self, ws: &mut Ws, conv: usize, on: bool) -> bool {
        let now = now_us();
        let id = self.convs[conv].id;
        if on {
            self.world.count_at(Count::TypingSent, now);
            self.world
                .typing_sent
                .borrow_mut()
                .insert((id, self.me), now);
        }
        ws.send(frame(
            &json!({"t": "typing", "conv": id.to_string(), "on": on}),
        ))
        .await
        .is_ok()
    }

    async fn read(&mut self, ws: &mut Ws, conv: usize) -> bool {
        let now = now_us();
        let c = &mut self.convs[conv];
        if c.unread_to <= c.read_to {
            return true;
        }
        c.read_to = c.unread_to;
        let (id, seq) = (c.id, c.read_to);
        self.world.count_at(Count::ReadsSent, now);
        self.world
            .reads_sent
            .borrow_mut()
            .insert((id, self.me), (seq, now));
        self.ask(
            ws,
            json!({"t": "read", "conv": id.to_string(), "seq": seq}),
            Asked::Plain("read"),
        )
        .await
    }

    async fn send(&mut self, ws: &mut Ws, conv: usize, scheduled: u64, pad: &mut String) -> bool {
        let plan = &self.world.plan;
        if pad.is_empty() {
            *pad = "x".repeat(plan.body_bytes.saturating_sub(18 + self.node.len()).max(1));
        }
        let id = self.id();
        let body = format!("{scheduled:016}|{}|{pad}", self.node);
        let conv_id = self.convs[conv].id.to_string();
        let mid = Uuid::now_v7().to_string();
        self.asked.insert(id, Asked::Send { conv, scheduled });
        self.world.count_at(Count::Sent, scheduled);
        let out = SendOut {
            t: "send",
            id,
            conv: &conv_id,
            mid: &mid,
            body: &body,
        };
        ws.send(encode(&out)).await.is_ok()
    }

    fn conv_index(&mut self, id: &str, seq_hint: u64) -> Option<usize> {
        let id = Uuid::parse_str(id).ok()?;
        if let Some(i) = self.by_id.get(&id) {
            return Some(*i);
        }
        // a conversation we did not know of (made after our list): hold it from here on
        self.convs.push(Conv::new(id, seq_hint.saturating_sub(1)));
        self.by_id.insert(id, self.convs.len() - 1);
        Some(self.convs.len() - 1)
    }

    async fn on_frame(
        &mut self,
        ws: &mut Ws,
        f: In<'_>,
        now: u64,
        p: &mut Plans,
    ) -> Result<(), ()> {
        let world = self.world;
        match f.t {
            "message" => {
                let seq = f.seq.unwrap_or(0);
                let Some(conv) = f.conv.and_then(|c| self.conv_index(c, seq)) else {
                    return Ok(());
                };
                if f.from == Some(self.me_text.as_str()) {
                    return Ok(());
                }
                let c = &mut self.convs[conv];
                if c.hold(seq) {
                    c.unread_to = c.unread_to.max(seq);
                    if let Some(at) = f
                        .body
                        .and_then(|b| b.get(..16))
                        .and_then(|t| t.parse::<u64>().ok())
                    {
                        world.count_at(Count::DeliveredLive, at);
                        let from = f
                            .body
                            .and_then(|b| b.get(17..))
                            .and_then(|b| b.split_once('|'))
                            .map(|(n, _)| n);
                        let kind = if from == Some(self.node.as_str()) {
                            Timed::DeliverySameNode
                        } else {
                            Timed::DeliveryCrossNode
                        };
                        world.time_at(kind, at, now);
                    }
                    // half the receivers are looking at the conversation and read it soon
                    if self.rng.random_bool(0.5) && !p.reads.iter().any(|(_, c)| *c == conv) {
                        let after = self.rng.random_range(500_000..5_000_000);
                        p.reads.push((now + after, conv));
                    }
                }
                if self.convs[conv].mark < seq && self.convs[conv].fetching.is_none() {
                    world.count_at(Count::GapFetches, now);
                    if !self.history_after(ws, conv, seq).await {
                        return Err(());
                    }
                }
                self.check_caught_up();
            }
            "sent" => {
                let Some(Asked::Send { conv, scheduled }) =
                    f.id.and_then(|i| self.asked.remove(&i))
                else {
                    return Ok(());
                };
                world.count_at(Count::Acked, scheduled);
                world.time_at(Timed::SendAck, scheduled, now);
                if let Some(seq) = f.seq {
                    let c = &mut self.convs[conv];
                    c.hold(seq);
                    let mut acked = world.acked_max.borrow_mut();
                    let e = acked.entry(c.id).or_default();
                    *e = (*e).max(seq);
                }
            }
            "typing" => {
                if f.on == Some(true)
                    && let (Some(conv), Some(user)) = (f.conv, f.user)
                    && let (Ok(conv), Ok(user)) = (Uuid::parse_str(conv), Uuid::parse_str(user))
                {
                    world.count_at(Count::TypingPushes, now);
                    if let Some(at) = world.typing_sent.borrow().get(&(conv, user)) {
                        world.time_at(Timed::Typing, *at, now);
                    }
                }
            }
            "receipt" => {
                world.count_at(Count::ReceiptPushes, now);
                if let (Some(conv), Some(user), Some(seq)) = (f.conv, f.user, f.seq)
                    && let (Ok(conv), Ok(user)) = (Uuid::parse_str(conv), Uuid::parse_str(user))
                    && let Some((read, at)) = world.reads_sent.borrow().get(&(conv, user))
                    && *read == seq
                {
                    world.time_at(Timed::Receipt, *at, now);
                }
            }
            "presence" if f.id.is_none() => world.count_at(Count::PresencePushes, now),
            "conversation" if f.id.is_none() => {
                if let Some(item) = &f.conversation {
                    self.conv_index(item.id, item.last_seq + 1);
                }
            }
            "error" => {
                let what = f.id.and_then(|i| self.asked.remove(&i));
                // by request and code: "history/unavailable"
                let code = format!(
                    "{}/{}",
                    what.as_ref().map_or("push", Asked::name),
                    f.code.unwrap_or("unknown")
                );
                world.events.borrow_mut().error(&code);
                // a refused read is asked again a little later, as an app does: the catch-up
                // waits for it
                let later = now + self.rng.random_range(500_000..2_000_000);
                match what {
                    Some(Asked::History { conv, .. }) => {
                        self.convs[conv].fetching = None;
                        p.retry_history.push((later, conv));
                    }
                    Some(Asked::List { counted, .. }) => {
                        p.retry_list_at = later;
                        p.retry_list_counted = counted;
                    }
                    _ => {}
                }
            }
            "bye" => return Err(()),
            "conversations" => {
                let Some(Asked::List { first, at, counted }) =
                    f.id.and_then(|i| self.asked.remove(&i))
                else {
                    return Ok(());
                };
                world.time_at(Timed::List, at, now);
                let mut behind = Vec::new();
                for item in &f.items {
                    let Ok(id) = Uuid::parse_str(item.id) else {
                        continue;
                    };
                    match self.by_id.get(&id) {
                        None => {
                            // the first sight of a conversation: its past is not ours to hold
                            self.convs.push(Conv::new(id, item.last_seq));
                            self.by_id.insert(id, self.convs.len() - 1);
                        }
                        Some(i) if self.convs[*i].mark < item.last_seq => {
                            behind.push((*i, item.last_seq))
                        }
                        Some(_) => {}
                    }
                }
                let more = f.more == Some(true);
                if first && !more && !self.open_app(ws, now).await {
                    return Err(());
                }
                for (conv, last_seq) in behind {
                    let c = &mut self.convs[conv];
                    if self.catching.is_some() {
                        c.owed = c.owed.max(last_seq);
                    }
                    // a fetch already in flight asks again if it answers short of this
                    if c.fetching.is_none() && !self.history_after(ws, conv, last_seq).await {
                        return Err(());
                    }
                }
                if more {
                    let oldest = f.items.last().map(|i| i.last_activity);
                    if !self.list(ws, first, oldest, counted).await {
                        return Err(());
                    }
                } else if counted && let Some(c) = &mut self.catching {
                    c.lists = c.lists.saturating_sub(1);
                }
                self.check_caught_up();
            }
            "history" => {
                let Some(Asked::History { conv, at }) = f.id.and_then(|i| self.asked.remove(&i))
                else {
                    return Ok(());
                };
                world.time_at(Timed::History, at, now);
                let c = &mut self.convs[conv];
                let want = c.fetching.take().unwrap_or(0);
                let mut newly = 0;
                for m in &f.messages {
                    if c.hold(m.seq) {
                        newly += 1;
                    }
                }
                if let Some(top) = f.messages.last() {
                    c.unread_to = c.unread_to.max(top.seq);
                }
                if newly > 0 {
                    world.events.borrow_mut().add(Count::CaughtUp, newly);
                }
                if f.more != Some(true) && c.mark < want {
                    // everything after `mark` was answered and `want` still not reached: a
                    // message acknowledged (or pushed) is missing from history
                    world.count(Count::HistoryHoles);
                    c.mark = want;
                    c.ahead.retain(|s| *s > want);
                }
                // more pages, pushes that skipped a seq while this was asked, or a catch-up's
                // list that saw more than this was asked for
                if (f.more == Some(true) || !c.ahead.is_empty() || c.owing())
                    && !self.history_after(ws, conv, want).await
                {
                    return Err(());
                }
                self.check_caught_up();
            }
            _ => {
                if let Some(i) = f.id {
                    self.asked.remove(&i);
                }
            }
        }
        Ok(())
    }

    /// What an app does when opened: the newest page of 1–3 conversations, and the contacts
    /// watched.
    async fn open_app(&mut self, ws: &mut Ws, now: u64) -> bool {
        let world = self.world;
        let pages = self.rng.random_range(1..=3usize).min(self.convs.len());
        for conv in 0..pages {
            let id = self.convs[conv].id.to_string();
            let asked = Asked::History { conv, at: now };
            if !self
                .ask(ws, json!({"t": "history", "conv": id, "limit": 20}), asked)
                .await
            {
                return false;
            }
            self.convs[conv].fetching = Some(0);
        }
        let users: Vec<String> = world.pop.watch[self.me_idx as usize]
            .iter()
            .map(|u| world.pop.users[*u as usize].to_string())
            .collect();
        users.is_empty()
            || self
                .ask(
                    ws,
                    json!({"t": "watch", "users": users}),
                    Asked::Plain("watch"),
                )
                .await
    }

    /// At the end: what this connected user holds of each conversation.
    fn settle(&mut self) {
        let mut held = self.world.held_min.borrow_mut();
        for c in self.convs.iter() {
            let e = held.entry(c.id).or_insert(u64::MAX);
            *e = (*e).min(c.mark);
        }
        *self.world.connected_at_end.borrow_mut() += 1;
    }
}
