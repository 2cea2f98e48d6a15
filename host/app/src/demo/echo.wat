;; The demo's own plugin, in WebAssembly text: no guest toolchain needed.
;; `pgnotifier demo` turns it into a component of the `plugin` world at
;; startup. It logs every notification as "CHANNEL: PAYLOAD"; its sidecar
;; asks for raw payloads, so the payload is the text as sent.
;;
;; Memory: 0..128 return areas, 128.. the payload kind names, 32768.. a bump
;; allocator for what the host passes in, reset after every call.
(module
  (import "pgnotifier:plugin/host@0.5.0" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 32768))

  ;; The payload kinds without text, 16 bytes apart; their lengths at 192.
  (data (i32.const 128) "null")
  (data (i32.const 144) "boolean")
  (data (i32.const 160) "integer")
  (data (i32.const 176) "float")
  (data (i32.const 192) "\04\07\07\05")

  (func $realloc (export "cabi_realloc")
      (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $at i32) (local $end i32)
    (local.set $at
      (i32.and
        (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $at) (local.get $size)))
    (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.add
                  (i32.shr_u
                    (i32.sub (local.get $end) (i32.shl (memory.size) (i32.const 16)))
                    (i32.const 16))
                  (i32.const 1)))
              (i32.const -1))
          (then unreachable))))
    (global.set $bump (local.get $end))
    (if (local.get $old)
      (then (memory.copy (local.get $at) (local.get $old) (local.get $old_size))))
    (local.get $at))

  ;; register: ok, with no channels of its own (the sidecar names them).
  (func (export "pgnotifier:plugin/subscriber@0.5.0#register")
      (param i32 i32 i32 i32) (result i32)
    (global.set $bump (i32.const 32768))
    (i32.store8 (i32.const 64) (i32.const 0))
    (i32.store (i32.const 68) (i32.const 8))
    (i32.store (i32.const 72) (i32.const 0))
    (i32.const 64))

  ;; on-notify: log "CHANNEL: PAYLOAD", return ok.
  (func (export "pgnotifier:plugin/subscriber@0.5.0#on-notify")
      (param $id i32) (param $id_len i32) (param $channel i32) (param $channel_len i32)
      (param $kind i32) (param $value i64) (param $text_len i32) (param $pid i32)
      (result i32)
    (local $out i32) (local $n i32) (local $name_len i32)
    (local.set $out
      (call $realloc (i32.const 0) (i32.const 0) (i32.const 1)
        (i32.add (local.get $channel_len) (i32.add (local.get $text_len) (i32.const 18)))))
    (memory.copy (local.get $out) (local.get $channel) (local.get $channel_len))
    (i32.store16 (i32.add (local.get $out) (local.get $channel_len)) (i32.const 0x203a))
    (local.set $n (i32.add (local.get $channel_len) (i32.const 2)))
    (if (i32.ge_u (local.get $kind) (i32.const 4))
      (then
        (memory.copy
          (i32.add (local.get $out) (local.get $n))
          (i32.wrap_i64 (local.get $value))
          (local.get $text_len))
        (local.set $n (i32.add (local.get $n) (local.get $text_len))))
      (else
        (local.set $name_len (i32.load8_u (i32.add (i32.const 192) (local.get $kind))))
        (memory.copy
          (i32.add (local.get $out) (local.get $n))
          (i32.add (i32.const 128) (i32.shl (local.get $kind) (i32.const 4)))
          (local.get $name_len))
        (local.set $n (i32.add (local.get $n) (local.get $name_len)))))
    (call $log (i32.const 2) (local.get $out) (local.get $n))
    (global.set $bump (i32.const 32768))
    (i32.store8 (i32.const 96) (i32.const 0))
    (i32.const 96))

  ;; on-gap: the host logs the gap itself.
  (func (export "pgnotifier:plugin/subscriber@0.5.0#on-gap") (param i32 i32 i32 i32)
    (global.set $bump (i32.const 32768)))
)
