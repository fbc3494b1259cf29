//! The OpenWire data structures, one declaration each: the fields in wire
//! order with their encoding and the protocol version that introduced them.
//! Decoding and encoding, tight and loose, for every version, all follow from
//! these tables (see `marshal.rs`).

/// How a field is encoded (see the wire-format reference, §1.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enc {
    Bool,
    Byte,
    Int,
    Long,
    Str,
    /// `byte[]` or a byte sequence: nullable, i32 length.
    Bytes,
    /// Exactly 8 bytes (the WireFormatInfo magic).
    Raw8,
    /// A nested structure.
    Obj,
    /// A nested structure that goes through the marshalling cache.
    CObj,
    /// A nullable array of nested structures.
    ObjArr,
    /// A Java throwable.
    Exc,
}

#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub enc: Enc,
    /// First protocol version with this field.
    pub since: u8,
    /// First protocol version without it (0 = still present).
    pub until: u8,
}

impl Field {
    pub fn present_in(&self, version: u8) -> bool {
        version >= self.since && (self.until == 0 || version < self.until)
    }
}

const fn f(name: &'static str, enc: Enc) -> Field {
    Field {
        name,
        enc,
        since: 1,
        until: 0,
    }
}
const fn v(name: &'static str, enc: Enc, since: u8) -> Field {
    Field {
        name,
        enc,
        since,
        until: 0,
    }
}

use Enc::*;

/// A declaration: a `'static` list of fields.
macro_rules! decl {
    ($($field:expr),* $(,)?) => {{
        const D: &[Field] = &[$($field),*];
        D
    }};
}

/// A command's declaration: the two fields every command starts with, then its own.
macro_rules! command {
    ($($field:expr),* $(,)?) => {
        decl![f("commandId", Int), f("responseRequired", Bool), $($field),*]
    };
}

pub const WIRE_FORMAT_INFO: u8 = 1;
pub const BROKER_INFO: u8 = 2;
pub const CONNECTION_INFO: u8 = 3;
pub const SESSION_INFO: u8 = 4;
pub const CONSUMER_INFO: u8 = 5;
pub const PRODUCER_INFO: u8 = 6;
pub const TRANSACTION_INFO: u8 = 7;
pub const DESTINATION_INFO: u8 = 8;
pub const REMOVE_SUBSCRIPTION_INFO: u8 = 9;
pub const KEEP_ALIVE_INFO: u8 = 10;
pub const SHUTDOWN_INFO: u8 = 11;
pub const REMOVE_INFO: u8 = 12;
pub const CONTROL_COMMAND: u8 = 14;
pub const FLUSH_COMMAND: u8 = 15;
pub const CONNECTION_ERROR: u8 = 16;
pub const CONSUMER_CONTROL: u8 = 17;
pub const CONNECTION_CONTROL: u8 = 18;
pub const PRODUCER_ACK: u8 = 19;
pub const MESSAGE_PULL: u8 = 20;
pub const MESSAGE_DISPATCH: u8 = 21;
pub const MESSAGE_ACK: u8 = 22;
pub const ACTIVEMQ_MESSAGE: u8 = 23;
pub const ACTIVEMQ_BYTES_MESSAGE: u8 = 24;
pub const ACTIVEMQ_MAP_MESSAGE: u8 = 25;
pub const ACTIVEMQ_OBJECT_MESSAGE: u8 = 26;
pub const ACTIVEMQ_STREAM_MESSAGE: u8 = 27;
pub const ACTIVEMQ_TEXT_MESSAGE: u8 = 28;
pub const ACTIVEMQ_BLOB_MESSAGE: u8 = 29;
pub const RESPONSE: u8 = 30;
pub const EXCEPTION_RESPONSE: u8 = 31;
pub const DATA_RESPONSE: u8 = 32;
pub const DATA_ARRAY_RESPONSE: u8 = 33;
pub const INTEGER_RESPONSE: u8 = 34;
pub const ACTIVEMQ_QUEUE: u8 = 100;
pub const ACTIVEMQ_TOPIC: u8 = 101;
pub const ACTIVEMQ_TEMP_QUEUE: u8 = 102;
pub const ACTIVEMQ_TEMP_TOPIC: u8 = 103;
pub const MESSAGE_ID: u8 = 110;
pub const LOCAL_TRANSACTION_ID: u8 = 111;
pub const XA_TRANSACTION_ID: u8 = 112;
pub const CONNECTION_ID: u8 = 120;
pub const SESSION_ID: u8 = 121;
pub const CONSUMER_ID: u8 = 122;
pub const PRODUCER_ID: u8 = 123;
pub const BROKER_ID: u8 = 124;

/// The fields shared by every message type (23–29), in wire order.
macro_rules! message_fields {
    ($($extra:expr),* $(,)?) => {
        command![
            f("producerId", CObj),
            f("destination", CObj),
            f("transactionId", CObj),
            f("originalDestination", CObj),
            f("messageId", Obj),
            f("originalTransactionId", CObj),
            f("groupID", Str),
            f("groupSequence", Int),
            f("correlationId", Str),
            f("persistent", Bool),
            f("expiration", Long),
            f("priority", Byte),
            f("replyTo", Obj),
            f("timestamp", Long),
            f("type", Str),
            f("content", Bytes),
            f("marshalledProperties", Bytes),
            f("dataStructure", Obj),
            f("targetConsumerId", CObj),
            f("compressed", Bool),
            f("redeliveryCounter", Int),
            f("brokerPath", ObjArr),
            f("arrival", Long),
            f("userID", Str),
            f("recievedByDFBridge", Bool),
            v("droppable", Bool, 2),
            v("cluster", ObjArr, 3),
            v("brokerInTime", Long, 3),
            v("brokerOutTime", Long, 3),
            v("jmsxGroupFirstForConsumer", Bool, 10),
            $($extra),*
        ]
    };
}

/// Field positions inside every message type (the hot path avoids name lookups).
pub mod msg {
    pub const COMMAND_ID: usize = 0;
    pub const RESPONSE_REQUIRED: usize = 1;
    pub const PRODUCER_ID: usize = 2;
    pub const DESTINATION: usize = 3;
    pub const TRANSACTION_ID: usize = 4;
    pub const ORIGINAL_DESTINATION: usize = 5;
    pub const MESSAGE_ID: usize = 6;
    pub const ORIGINAL_TRANSACTION_ID: usize = 7;
    pub const GROUP_ID: usize = 8;
    pub const GROUP_SEQUENCE: usize = 9;
    pub const CORRELATION_ID: usize = 10;
    pub const PERSISTENT: usize = 11;
    pub const EXPIRATION: usize = 12;
    pub const PRIORITY: usize = 13;
    pub const REPLY_TO: usize = 14;
    pub const TIMESTAMP: usize = 15;
    pub const TYPE: usize = 16;
    pub const CONTENT: usize = 17;
    pub const PROPERTIES: usize = 18;
    pub const DATA_STRUCTURE: usize = 19;
    pub const TARGET_CONSUMER_ID: usize = 20;
    pub const COMPRESSED: usize = 21;
    pub const REDELIVERY_COUNTER: usize = 22;
    pub const BROKER_PATH: usize = 23;
    pub const ARRIVAL: usize = 24;
    pub const USER_ID: usize = 25;
    pub const BROKER_IN_TIME: usize = 29;
    pub const BROKER_OUT_TIME: usize = 30;
    pub const GROUP_FIRST_FOR_CONSUMER: usize = 31;
}

static MESSAGE: &[Field] = message_fields![];
static BLOB_MESSAGE: &[Field] = message_fields![
    v("remoteBlobUrl", Str, 3),
    v("mimeType", Str, 3),
    v("deletedByBroker", Bool, 3),
];

/// The declaration of a structure type, or `None` for an unknown type id.
pub fn fields(type_id: u8) -> Option<&'static [Field]> {
    Some(match type_id {
        WIRE_FORMAT_INFO => decl![
            f("magic", Raw8),
            f("version", Int),
            f("marshalledProperties", Bytes),
        ],
        BROKER_INFO => command![
            f("brokerId", CObj),
            f("brokerURL", Str),
            f("peerBrokerInfos", ObjArr),
            f("brokerName", Str),
            f("slaveBroker", Bool),
            f("masterBroker", Bool),
            f("faultTolerantConfiguration", Bool),
            v("duplexConnection", Bool, 2),
            v("networkConnection", Bool, 2),
            v("connectionId", Long, 2),
            v("brokerUploadUrl", Str, 3),
            v("networkProperties", Str, 3),
        ],
        CONNECTION_INFO => command![
            f("connectionId", CObj),
            f("clientId", Str),
            f("password", Str),
            f("userName", Str),
            f("brokerPath", ObjArr),
            f("brokerMasterConnector", Bool),
            f("manageable", Bool),
            v("clientMaster", Bool, 2),
            v("faultTolerant", Bool, 6),
            v("failoverReconnect", Bool, 6),
            v("clientIp", Str, 8),
        ],
        SESSION_INFO => command![f("sessionId", CObj)],
        CONSUMER_INFO => command![
            f("consumerId", CObj),
            f("browser", Bool),
            f("destination", CObj),
            f("prefetchSize", Int),
            f("maximumPendingMessageLimit", Int),
            f("dispatchAsync", Bool),
            f("selector", Str),
            v("clientId", Str, 10),
            f("subscriptionName", Str),
            f("noLocal", Bool),
            f("exclusive", Bool),
            f("retroactive", Bool),
            f("priority", Byte),
            f("brokerPath", ObjArr),
            f("additionalPredicate", Obj),
            f("networkSubscription", Bool),
            f("optimizedAcknowledge", Bool),
            f("noRangeAcks", Bool),
            v("networkConsumerPath", ObjArr, 4),
        ],
        PRODUCER_INFO => command![
            f("producerId", CObj),
            f("destination", CObj),
            f("brokerPath", ObjArr),
            v("dispatchAsync", Bool, 2),
            v("windowSize", Int, 3),
        ],
        TRANSACTION_INFO => command![
            f("connectionId", CObj),
            f("transactionId", CObj),
            f("type", Byte),
        ],
        DESTINATION_INFO => command![
            f("connectionId", CObj),
            f("destination", CObj),
            f("operationType", Byte),
            f("timeout", Long),
            f("brokerPath", ObjArr),
        ],
        REMOVE_SUBSCRIPTION_INFO => command![
            f("connectionId", CObj),
            f("subscriptionName", Str),
            f("clientId", Str),
        ],
        KEEP_ALIVE_INFO | SHUTDOWN_INFO | FLUSH_COMMAND => command![],
        REMOVE_INFO => command![f("objectId", CObj), v("lastDeliveredSequenceId", Long, 5)],
        CONTROL_COMMAND => command![f("command", Str)],
        CONNECTION_ERROR => command![f("exception", Exc), f("connectionId", Obj)],
        CONSUMER_CONTROL => command![
            v("destination", Obj, 6),
            f("close", Bool),
            f("consumerId", Obj),
            f("prefetch", Int),
            v("flush", Bool, 2),
            v("start", Bool, 2),
            v("stop", Bool, 2),
        ],
        CONNECTION_CONTROL => command![
            f("close", Bool),
            f("exit", Bool),
            f("faultTolerant", Bool),
            f("resume", Bool),
            f("suspend", Bool),
            v("connectedBrokers", Str, 6),
            v("reconnectTo", Str, 6),
            v("rebalanceConnection", Bool, 6),
            v("token", Bytes, 8),
        ],
        PRODUCER_ACK => command![f("producerId", Obj), f("size", Int)],
        MESSAGE_PULL => command![
            f("consumerId", CObj),
            f("destination", CObj),
            f("timeout", Long),
            v("correlationId", Str, 3),
            v("messageId", Obj, 3),
        ],
        MESSAGE_DISPATCH => command![
            f("consumerId", CObj),
            f("destination", CObj),
            f("message", Obj),
            f("redeliveryCounter", Int),
        ],
        MESSAGE_ACK => command![
            f("destination", CObj),
            f("transactionId", CObj),
            f("consumerId", CObj),
            f("ackType", Byte),
            f("firstMessageId", Obj),
            f("lastMessageId", Obj),
            f("messageCount", Int),
            v("poisonCause", Exc, 7),
        ],
        ACTIVEMQ_MESSAGE..=ACTIVEMQ_TEXT_MESSAGE => MESSAGE,
        ACTIVEMQ_BLOB_MESSAGE => BLOB_MESSAGE,
        RESPONSE => command![f("correlationId", Int)],
        EXCEPTION_RESPONSE => command![f("correlationId", Int), f("exception", Exc)],
        DATA_RESPONSE => command![f("correlationId", Int), f("data", Obj)],
        DATA_ARRAY_RESPONSE => command![f("correlationId", Int), f("data", ObjArr)],
        INTEGER_RESPONSE => command![f("correlationId", Int), f("result", Int)],
        40 => decl![f("serviceName", Str), f("brokerName", Str)],
        50 => decl![
            f("destination", Obj),
            f("messageId", Obj),
            f("messageSequenceId", Long),
            f("subscritionName", Str),
            f("clientId", Str),
            f("transactionId", Obj),
        ],
        52 => decl![f("destination", Obj), f("messageAck", Obj)],
        53 => decl![f("message", Str)],
        54 => decl![
            f("transactionId", Obj),
            f("type", Byte),
            f("wasPrepared", Bool)
        ],
        55 => decl![
            f("clientId", Str),
            f("destination", CObj),
            f("selector", Str),
            f("subscriptionName", Str),
            v("subscribedDestination", Obj, 3),
            v("noLocal", Bool, 11),
        ],
        60 | 61 => decl![f("commandId", Int), f("data", Bytes)],
        65 => command![f("firstNakNumber", Int), f("lastNakNumber", Int)],
        90 => command![
            f("consumerId", CObj),
            f("destination", CObj),
            f("deliverySequenceId", Long),
            f("messageId", Obj),
        ],
        91 => decl![
            Field {
                name: "networkTTL",
                enc: Int,
                since: 1,
                until: 10
            },
            f("networkBrokerId", CObj),
            v("messageTTL", Int, 10),
            v("consumerTTL", Int, 10),
        ],
        92 => command![
            f("brokerId", Obj),
            f("brokerName", Str),
            f("subscriptionInfos", ObjArr),
        ],
        ACTIVEMQ_QUEUE..=ACTIVEMQ_TEMP_TOPIC => decl![f("physicalName", Str)],
        MESSAGE_ID => decl![
            v("textView", Str, 10),
            f("producerId", CObj),
            f("producerSequenceId", Long),
            f("brokerSequenceId", Long),
        ],
        LOCAL_TRANSACTION_ID => decl![f("value", Long), f("connectionId", CObj)],
        XA_TRANSACTION_ID => decl![
            f("formatId", Int),
            f("globalTransactionId", Bytes),
            f("branchQualifier", Bytes),
        ],
        CONNECTION_ID | BROKER_ID => decl![f("value", Str)],
        SESSION_ID => decl![f("connectionId", Str), f("value", Long)],
        CONSUMER_ID => decl![
            f("connectionId", Str),
            f("sessionId", Long),
            f("value", Long)
        ],
        PRODUCER_ID => decl![
            f("connectionId", Str),
            f("value", Long),
            f("sessionId", Long)
        ],
        _ => return None,
    })
}

/// Types that carry the extra "marshal-aware" flag when nested (tight mode).
pub fn is_marshal_aware(type_id: u8) -> bool {
    type_id == WIRE_FORMAT_INFO || (ACTIVEMQ_MESSAGE..=ACTIVEMQ_BLOB_MESSAGE).contains(&type_id)
}

pub fn is_message(type_id: u8) -> bool {
    (ACTIVEMQ_MESSAGE..=ACTIVEMQ_BLOB_MESSAGE).contains(&type_id)
}

/// The position of a named field in a type's declaration.
pub fn index_of(type_id: u8, name: &str) -> Option<usize> {
    fields(type_id)?.iter().position(|f| f.name == name)
}

/// The name ActiveMQ gives a type (for logs).
pub fn type_name(type_id: u8) -> &'static str {
    match type_id {
        1 => "WireFormatInfo",
        2 => "BrokerInfo",
        3 => "ConnectionInfo",
        4 => "SessionInfo",
        5 => "ConsumerInfo",
        6 => "ProducerInfo",
        7 => "TransactionInfo",
        8 => "DestinationInfo",
        9 => "RemoveSubscriptionInfo",
        10 => "KeepAliveInfo",
        11 => "ShutdownInfo",
        12 => "RemoveInfo",
        14 => "ControlCommand",
        15 => "FlushCommand",
        16 => "ConnectionError",
        17 => "ConsumerControl",
        18 => "ConnectionControl",
        19 => "ProducerAck",
        20 => "MessagePull",
        21 => "MessageDispatch",
        22 => "MessageAck",
        23 => "ActiveMQMessage",
        24 => "ActiveMQBytesMessage",
        25 => "ActiveMQMapMessage",
        26 => "ActiveMQObjectMessage",
        27 => "ActiveMQStreamMessage",
        28 => "ActiveMQTextMessage",
        29 => "ActiveMQBlobMessage",
        30 => "Response",
        31 => "ExceptionResponse",
        32 => "DataResponse",
        33 => "DataArrayResponse",
        34 => "IntegerResponse",
        100 => "ActiveMQQueue",
        101 => "ActiveMQTopic",
        102 => "ActiveMQTempQueue",
        103 => "ActiveMQTempTopic",
        110 => "MessageId",
        111 => "LocalTransactionId",
        112 => "XATransactionId",
        120 => "ConnectionId",
        121 => "SessionId",
        122 => "ConsumerId",
        123 => "ProducerId",
        124 => "BrokerId",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_field_constants_match_the_declaration() {
        let m = fields(ACTIVEMQ_TEXT_MESSAGE).unwrap();
        for (i, name) in [
            (msg::PRODUCER_ID, "producerId"),
            (msg::DESTINATION, "destination"),
            (msg::MESSAGE_ID, "messageId"),
            (msg::CONTENT, "content"),
            (msg::PROPERTIES, "marshalledProperties"),
            (msg::REDELIVERY_COUNTER, "redeliveryCounter"),
            (msg::USER_ID, "userID"),
            (msg::BROKER_IN_TIME, "brokerInTime"),
            (msg::BROKER_OUT_TIME, "brokerOutTime"),
        ] {
            assert_eq!(m[i].name, name);
        }
        assert_eq!(fields(ACTIVEMQ_BLOB_MESSAGE).unwrap().len(), m.len() + 3);
    }
}
