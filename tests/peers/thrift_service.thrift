// IDL of the Thrift services the end-to-end tests trace (loaded at runtime with
// thriftpy2.load; the Apache and Rust peers write the same messages by hand).

exception CalcError {
  1: string message,
  2: i32 code,
}

service Calculator {
  // a + b
  i32 add(1: i32 a, 2: i32 b),
  // returns text unchanged
  string echo(1: string text),
  // a / b; b == 0 raises the declared CalcError
  i32 divide(1: i32 a, 2: i32 b) throws (1: CalcError err),
  // always fails with an undeclared error (a TApplicationException on the wire)
  void crash(1: string why),
  // fire and forget: the server records the event, no reply
  oneway void notify(1: string event),
  // returns the events notify recorded so far, joined by ","
  string events(),
}

service Greeter {
  string greet(1: string name),
}
