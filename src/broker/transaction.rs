//! A local transaction, as both protocols keep it until COMMIT or ROLLBACK:
//! the sends to make and the acknowledgements held (see
//! [`AckAction::Hold`](crate::broker::queue::AckAction::Hold)).
//! [`Broker::commit`](crate::broker::Broker::commit) makes it durable and
//! applies it; [`Transaction::rollback`] undoes the held acks.

use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::broker::Target;
use std::sync::Arc;

pub enum TxOp {
    Send(Target, Box<Message>),
    Ack {
        queue: Arc<Queue>,
        consumer: u64,
        seqs: Vec<u64>,
    },
}

#[derive(Default)]
pub struct Transaction {
    pub ops: Vec<TxOp>,
    /// Bytes it holds (messages and acknowledgements), for its size limit.
    pub bytes: usize,
    /// Why it may only roll back: a part of it the client did not wait
    /// for failed.
    pub rollback_only: Option<String>,
}

/// A transaction's sends and held acknowledgements, apart.
pub type TxParts = (Vec<(Target, Message)>, Vec<(Arc<Queue>, u64, Vec<u64>)>);

impl Transaction {
    pub fn into_parts(self) -> TxParts {
        let mut sends = Vec::new();
        let mut acks = Vec::new();
        for op in self.ops {
            match op {
                TxOp::Send(target, m) => sends.push((target, *m)),
                TxOp::Ack {
                    queue,
                    consumer,
                    seqs,
                } => acks.push((queue, consumer, seqs)),
            }
        }
        (sends, acks)
    }

    /// Drops the sends; the held acknowledgements are unacknowledged again.
    pub fn rollback(self) {
        for op in self.ops {
            if let TxOp::Ack {
                queue,
                consumer,
                seqs,
            } = op
            {
                queue.settle_held(consumer, &seqs, false, false);
            }
        }
    }
}
