//! Decoded OpenWire structures as plain values: a type id and its fields in
//! declaration order (see `schema.rs`). Generic on purpose: one walker
//! decodes and encodes every type, and a decoded frame re-encodes to the same
//! bytes.

use crate::openwire::schema::{self, Enc};
use bytes::Bytes;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// An absent object, string, byte array, array or throwable.
    Null,
    Bool(bool),
    Byte(i8),
    Int(i32),
    Long(i64),
    Str(String),
    Bytes(Bytes),
    Raw8([u8; 8]),
    /// Shared: cached and repeated structures (ids, destinations) are
    /// cloned by reference.
    Obj(std::sync::Arc<Struct>),
    Arr(Vec<Value>),
    Exc(Box<Throwable>),
}

impl Value {
    /// The value a field has when it is absent from the wire (older versions).
    pub fn default_for(enc: Enc) -> Value {
        match enc {
            Enc::Bool => Value::Bool(false),
            Enc::Byte => Value::Byte(0),
            Enc::Int => Value::Int(0),
            Enc::Long => Value::Long(0),
            _ => Value::Null,
        }
    }

    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    pub fn obj(s: Struct) -> Value {
        Value::Obj(std::sync::Arc::new(s))
    }

    pub fn opt_str(s: Option<impl Into<String>>) -> Value {
        s.map_or(Value::Null, |s| Value::Str(s.into()))
    }

    pub fn as_struct(&self) -> Option<&Struct> {
        match self {
            Value::Obj(s) => Some(s),
            _ => None,
        }
    }
}

/// A Java throwable on the wire (class name, message, stack, cause).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Throwable {
    pub class: Option<String>,
    pub message: Option<String>,
    pub frames: Vec<StackFrame>,
    pub cause: Option<Box<Throwable>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StackFrame {
    pub class: Option<String>,
    pub method: Option<String>,
    pub file: Option<String>,
    pub line: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Struct {
    pub type_id: u8,
    pub fields: Vec<Value>,
}

impl Struct {
    /// A structure of `type_id` with every field at its default.
    pub fn new(type_id: u8) -> Struct {
        let fields = schema::fields(type_id)
            .unwrap_or_else(|| panic!("unknown OpenWire type {type_id}"))
            .iter()
            .map(|f| Value::default_for(f.enc))
            .collect();
        Struct { type_id, fields }
    }

    fn index(&self, name: &str) -> usize {
        schema::index_of(self.type_id, name)
            .unwrap_or_else(|| panic!("{} has no field {name}", schema::type_name(self.type_id)))
    }

    /// A field by name; `Null` when this type has no such field (a peer may
    /// put any structure where another was expected: never panic on it).
    pub fn get(&self, name: &str) -> &Value {
        static NULL: Value = Value::Null;
        match schema::index_of(self.type_id, name) {
            Some(i) => self.fields.get(i).unwrap_or(&NULL),
            None => &NULL,
        }
    }

    pub fn set(&mut self, name: &str, value: Value) -> &mut Self {
        let i = self.index(name);
        self.fields[i] = value;
        self
    }

    pub fn with(mut self, name: &str, value: Value) -> Self {
        self.set(name, value);
        self
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, name: &str) -> i32 {
        match self.get(name) {
            Value::Int(v) => *v,
            _ => 0,
        }
    }

    pub fn long(&self, name: &str) -> i64 {
        match self.get(name) {
            Value::Long(v) => *v,
            _ => 0,
        }
    }

    pub fn byte(&self, name: &str) -> i8 {
        match self.get(name) {
            Value::Byte(v) => *v,
            _ => 0,
        }
    }

    pub fn bool(&self, name: &str) -> bool {
        matches!(self.get(name), Value::Bool(true))
    }

    pub fn obj(&self, name: &str) -> Option<&Struct> {
        self.get(name).as_struct()
    }

    pub fn bytes(&self, name: &str) -> Option<&Bytes> {
        match self.get(name) {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// `commandId` of a command (0 for non-commands).
    pub fn command_id(&self) -> i32 {
        match self.fields.first() {
            Some(Value::Int(v)) if self.is_command() => *v,
            _ => 0,
        }
    }

    pub fn response_required(&self) -> bool {
        self.is_command() && matches!(self.fields.get(1), Some(Value::Bool(true)))
    }

    /// Whether the type starts with commandId/responseRequired.
    pub fn is_command(&self) -> bool {
        schema::fields(self.type_id)
            .and_then(|f| f.first())
            .is_some_and(|f| f.name == "commandId")
            && !matches!(self.type_id, 60 | 61)
    }
}
