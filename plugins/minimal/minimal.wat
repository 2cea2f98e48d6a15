;; pgnotifier example plugin (WAT): the smallest subscriber, and the reference
;; for the canonical ABI of `pgnotifier:plugin@0.5.0` as a core module sees it.
;;
;; It listens on the channel `minimal` (a sidecar's `channels` overrides that)
;; and logs every notification as `got <case> <value>`. Floats print as their
;; IEEE-754 bits (`got float 0x400c000000000000`): WAT has no number formatting.
;;
;; Build: wasm-tools component embed ../../wit -w plugin minimal.wat -o core.wasm
;;        wasm-tools component new core.wasm -o minimal.wasm
(module
  ;; The host's one function, `log: func(level: level, message: string)`.
  ;; The enum `level` is its index (trace 0, debug 1, info 2, warn 3, error 4);
  ;; a string is a (pointer, length) pair of UTF-8 bytes in our memory.
  (import "pgnotifier:plugin/host@0.5.0" "log" (func $log (param i32 i32 i32)))

  ;; The host reads and writes this memory: it is every string's home.
  (memory (export "memory") 1)

  ;; Static data, laid out by hand:
  ;;   16  the channel name "minimal"
  ;;   32  a list<string> of one element: (pointer 16, length 7)
  ;;   48  the result area the exports return a pointer to
  ;;   64  the words this plugin writes, at the offsets below
  ;;  128  scratch for digits
  ;; 1024  the line being written (a payload is at most 7999 bytes)
  ;; 16384 and up: what the host allocates for arguments
  (data (i32.const 16) "minimal")
  (data (i32.const 32) "\10\00\00\00\07\00\00\00")
  ;;  64 "got " | 68 "null" | 72 "boolean" | 79 "integer" | 86 "float"
  ;;  91 "text" | 95 "json" | 99 "true"    | 103 "false"  | 108 "0x"
  (data (i32.const 64) "got nullbooleanintegerfloattextjsontruefalse0x")

  (global $out (mut i32) (i32.const 1024))     ;; next byte of the line
  (global $heap (mut i32) (i32.const 16384))   ;; next free byte for the host

  ;; cabi_realloc(old, old_size, align, new_size): the host calls it to place
  ;; arguments (strings, lists) in our memory before each call. A bump
  ;; allocator is enough: every export frees it all by resetting $heap,
  ;; because no result points into it.
  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    ;; Grow by the pages missing; a refused grow traps, and the host recycles us.
    (if (i32.gt_u (global.get $heap) (i32.shl (memory.size) (i32.const 16)))
      (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $heap) (i32.shl (memory.size) (i32.const 16)))
                                                          (i32.const 16))
                                              (i32.const 1)))
                        (i32.const -1))
              (then unreachable))))
    (local.get $p))

  ;; register: func(id: string, config: list<tuple<string, string>>)
  ;;             -> result<registration, string>
  ;; In: id as (pointer, length); config as (pointer, count) of 16-byte
  ;; elements (key pointer, key length, value pointer, value length).
  ;; Out: a result is more than one core value, so we return a pointer to
  ;; {tag: u8 at +0 (0 ok, 1 err), payload at +4}. Here the payload is a
  ;; `registration`: its one field, list<string>, as (pointer, count).
  (func (export "pgnotifier:plugin/subscriber@0.5.0#register")
        (param $id i32) (param $id_len i32) (param $config i32) (param $config_len i32) (result i32)
    (global.set $heap (i32.const 16384))
    (i32.store8 (i32.const 48) (i32.const 0))   ;; ok
    (i32.store (i32.const 52) (i32.const 32))   ;; channels: the list at 32
    (i32.store (i32.const 56) (i32.const 1))    ;; of one element
    (i32.const 48))

  ;; on-notify: func(id: string, channel: string, payload: payload, pid: s32)
  ;;              -> result<_, string>
  ;; The variant `payload` flattens to three core values: the case index
  ;; (null 0, boolean 1, integer 2, float 3, text 4, json 5), an i64 holding
  ;; the case's value (the bool, the s64, the f64's bits, or a string's
  ;; pointer) and an i32 (a string's length).
  (func (export "pgnotifier:plugin/subscriber@0.5.0#on-notify")
        (param $id i32) (param $id_len i32) (param $channel i32) (param $channel_len i32)
        (param $case i32) (param $value i64) (param $len i32) (param $pid i32) (result i32)
    (global.set $out (i32.const 1024))
    (call $put (i32.const 64) (i32.const 4))                                ;; "got "
    (if (i32.eq (local.get $case) (i32.const 0))
      (then (call $put (i32.const 68) (i32.const 4))))                      ;; "null"
    (if (i32.eq (local.get $case) (i32.const 1))
      (then (call $put (i32.const 72) (i32.const 7)) (call $space)          ;; "boolean "
            (if (i64.eqz (local.get $value))
              (then (call $put (i32.const 103) (i32.const 5)))              ;; "false"
              (else (call $put (i32.const 99) (i32.const 4))))))            ;; "true"
    (if (i32.eq (local.get $case) (i32.const 2))
      (then (call $put (i32.const 79) (i32.const 7)) (call $space)          ;; "integer "
            (call $decimal (local.get $value))))
    (if (i32.eq (local.get $case) (i32.const 3))
      (then (call $put (i32.const 86) (i32.const 5)) (call $space)          ;; "float "
            (call $put (i32.const 108) (i32.const 2))                       ;; "0x"
            (call $hex (local.get $value))))
    (if (i32.eq (local.get $case) (i32.const 4))
      (then (call $put (i32.const 91) (i32.const 4)) (call $space)          ;; "text "
            (call $put (i32.wrap_i64 (local.get $value)) (local.get $len))))
    (if (i32.eq (local.get $case) (i32.const 5))
      (then (call $put (i32.const 95) (i32.const 4)) (call $space)          ;; "json "
            (call $put (i32.wrap_i64 (local.get $value)) (local.get $len))))
    (call $log (i32.const 2) (i32.const 1024) (i32.sub (global.get $out) (i32.const 1024)))
    (global.set $heap (i32.const 16384))
    ;; result<_, string>: tag 0 is ok, with nothing after it.
    (i32.store8 (i32.const 48) (i32.const 0))
    (i32.const 48))

  ;; on-gap: func(id: string, channels: list<string>). No result. A subscriber
  ;; that keeps no state has nothing to resynchronise.
  (func (export "pgnotifier:plugin/subscriber@0.5.0#on-gap")
        (param $id i32) (param $id_len i32) (param $channels i32) (param $channels_len i32)
    (global.set $heap (i32.const 16384)))

  ;; Append $len bytes from $from to the line.
  (func $put (param $from i32) (param $len i32)
    (memory.copy (global.get $out) (local.get $from) (local.get $len))
    (global.set $out (i32.add (global.get $out) (local.get $len))))

  (func $space (call $put (i32.const 67) (i32.const 1)))

  ;; Append a signed 64-bit integer in decimal: digits right to left in scratch.
  (func $decimal (param $v i64)
    (local $p i32)
    (if (i64.lt_s (local.get $v) (i64.const 0))
      (then (i32.store8 (i32.const 128) (i32.const 45))                     ;; "-"
            (call $put (i32.const 128) (i32.const 1))
            (local.set $v (i64.sub (i64.const 0) (local.get $v)))))          ;; as unsigned, even for the minimum
    (local.set $p (i32.const 152))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (call $put (local.get $p) (i32.sub (i32.const 152) (local.get $p))))

  ;; Append 64 bits as 16 lowercase hex digits, most significant first.
  (func $hex (param $v i64)
    (local $shift i64) (local $nibble i32)
    (local.set $shift (i64.const 60))
    (loop $next
      (local.set $nibble (i32.wrap_i64 (i64.and (i64.shr_u (local.get $v) (local.get $shift)) (i64.const 15))))
      (i32.store8 (i32.const 128)
        (i32.add (local.get $nibble)
                 (select (i32.const 48) (i32.const 87) (i32.lt_u (local.get $nibble) (i32.const 10)))))
      (call $put (i32.const 128) (i32.const 1))
      (local.set $shift (i64.sub (local.get $shift) (i64.const 4)))
      (br_if $next (i64.ge_s (local.get $shift) (i64.const 0)))))
)
