;; f32 <-> f16 / bf16 array conversions with SIMD128, bit-identical to the TypeScript reference
;; in ../float16.ts (round to nearest even, NaN rules included). Each function converts `n`
;; elements from `src` to `dst` inside this module's memory, rounded UP to a whole vector step:
;; the caller owns the padding lanes and ignores their results.
;; Regenerate the embedded bytes with `pnpm build:wasm` (in this package) after editing.
(module
  (memory (export "memory") 32) ;; 2 MiB: the caller's input and output chunks

  ;; f32 -> f16 of 4 lanes, every case. Per lane (abs = f & 0x7fffffff):
  ;;   normal  abs in [2^-14, 2^16):  (abs - 0x38000000 + 0xfff + odd) >> 13
  ;;   small   abs < 2^-14:           bits(f32(|x| + 0.5)) - bits(0.5): the float add rounds
  ;;                                  |x| * 2^24 to an integer, ties to even (f16 subnormal or 0x400)
  ;;   big     abs >= 2^16:           Inf 0x7c00, or NaN 0x7c00 | payload (0x200 if it vanished)
  (func $f16_lanes (param $f v128) (result v128)
    (local $abs v128) (local $r v128) (local $payload v128)
    (local.set $abs (v128.and (local.get $f) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff)))
    ;; normal lanes (0xc8000fff = -0x38000000 + 0xfff modulo 2^32)
    (local.set $r
      (i32x4.shr_u
        (i32x4.add
          (i32x4.add (local.get $abs) (v128.const i32x4 0xc8000fff 0xc8000fff 0xc8000fff 0xc8000fff))
          (v128.and (i32x4.shr_u (local.get $abs) (i32.const 13)) (v128.const i32x4 1 1 1 1)))
        (i32.const 13)))
    ;; small lanes
    (local.set $r
      (v128.bitselect
        (i32x4.sub
          (f32x4.add (local.get $abs) (v128.const f32x4 0.5 0.5 0.5 0.5))
          (v128.const i32x4 0x3f000000 0x3f000000 0x3f000000 0x3f000000))
        (local.get $r)
        (i32x4.lt_s (local.get $abs) (v128.const i32x4 0x38800000 0x38800000 0x38800000 0x38800000))))
    ;; big lanes: Inf, overflow to Inf, NaN with its payload kept
    (local.set $payload
      (v128.and (i32x4.shr_u (local.get $abs) (i32.const 13)) (v128.const i32x4 0x3ff 0x3ff 0x3ff 0x3ff)))
    (local.set $r
      (v128.bitselect
        (v128.or
          (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)
          (v128.and
            (i32x4.gt_s (local.get $abs) (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))
            (v128.or
              (local.get $payload)
              (v128.and
                (i32x4.eq (local.get $payload) (v128.const i32x4 0 0 0 0))
                (v128.const i32x4 0x200 0x200 0x200 0x200)))))
        (local.get $r)
        (i32x4.ge_s (local.get $abs) (v128.const i32x4 0x47800000 0x47800000 0x47800000 0x47800000))))
    ;; sign
    (v128.or
      (local.get $r)
      (v128.and (i32x4.shr_u (local.get $f) (i32.const 16)) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000))))

  ;; f32 -> f16, 8 lanes per step. When all 8 are normal f16 numbers (the common case for weights),
  ;; only the normal formula runs; else $f16_lanes. The test: abs + 0x47800000 (wrapping) maps
  ;; [0x38800000, 0x47800000) onto [INT_MIN, 0x8f000000), the only lanes signed-below 0x8f000000.
  ;; Results are in [0, 0xffff], so the saturating unsigned narrow keeps them exactly.
  (func (export "f32_to_f16") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $f0 v128) (local $f1 v128) (local $a0 v128) (local $a1 v128)
    ;; Constants live in locals: V8 rebuilds a v128.const at each use inside a loop.
    (local $absMask v128) (local $bias v128) (local $limit v128) (local $rebias v128)
    (local $one v128) (local $sign v128)
    (local.set $absMask (i32x4.splat (i32.const 0x7fffffff)))
    (local.set $bias (i32x4.splat (i32.const 0x47800000)))
    (local.set $limit (i32x4.splat (i32.const 0x8f000000)))
    (local.set $rebias (i32x4.splat (i32.const 0xc8000fff)))
    (local.set $one (i32x4.splat (i32.const 1)))
    (local.set $sign (i32x4.splat (i32.const 0x8000)))
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $n) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
        (local.set $f0 (v128.load (local.get $src)))
        (local.set $f1 (v128.load offset=16 (local.get $src)))
        (local.set $a0 (v128.and (local.get $f0) (local.get $absMask)))
        (local.set $a1 (v128.and (local.get $f1) (local.get $absMask)))
        (if
          (i32x4.all_true
            (v128.and
              (i32x4.lt_s (i32x4.add (local.get $a0) (local.get $bias)) (local.get $limit))
              (i32x4.lt_s (i32x4.add (local.get $a1) (local.get $bias)) (local.get $limit))))
          (then
            (v128.store (local.get $dst)
              (i16x8.narrow_i32x4_u
                (v128.or
                  (i32x4.shr_u
                    (i32x4.add
                      (i32x4.add (local.get $a0) (local.get $rebias))
                      (v128.and (i32x4.shr_u (local.get $a0) (i32.const 13)) (local.get $one)))
                    (i32.const 13))
                  (v128.and (i32x4.shr_u (local.get $f0) (i32.const 16)) (local.get $sign)))
                (v128.or
                  (i32x4.shr_u
                    (i32x4.add
                      (i32x4.add (local.get $a1) (local.get $rebias))
                      (v128.and (i32x4.shr_u (local.get $a1) (i32.const 13)) (local.get $one)))
                    (i32.const 13))
                  (v128.and (i32x4.shr_u (local.get $f1) (i32.const 16)) (local.get $sign))))))
          (else
            (v128.store (local.get $dst)
              (i8x16.shuffle 0 1 4 5 8 9 12 13 16 17 20 21 24 25 28 29
                (call $f16_lanes (local.get $f0))
                (call $f16_lanes (local.get $f1))))))
        (local.set $src (i32.add (local.get $src) (i32.const 32)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
        (br $next))))

  ;; f16 -> f32 (exact) of 4 lanes (zero-extended to 32 bits), every case. em = h & 0x7fff:
  ;;   normal (em << 13) + 0x38000000; Inf/NaN the same plus 0x38000000 more (exponent 0xff);
  ;;   zero and subnormal: f32(em) * 2^-24, exact.
  (func $f32_lanes (param $h v128) (result v128)
    (local $em v128) (local $r v128)
    (local.set $em (v128.and (local.get $h) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)))
    (local.set $r
      (i32x4.add (i32x4.shl (local.get $em) (i32.const 13))
        (v128.const i32x4 0x38000000 0x38000000 0x38000000 0x38000000)))
    (local.set $r
      (v128.bitselect
        (i32x4.add (local.get $r) (v128.const i32x4 0x38000000 0x38000000 0x38000000 0x38000000))
        (local.get $r)
        (i32x4.ge_s (local.get $em) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00))))
    (local.set $r
      (v128.bitselect
        (f32x4.mul (f32x4.convert_i32x4_s (local.get $em))
          (v128.const f32x4 0x1p-24 0x1p-24 0x1p-24 0x1p-24))
        (local.get $r)
        (i32x4.lt_s (local.get $em) (v128.const i32x4 0x400 0x400 0x400 0x400))))
    (v128.or (local.get $r)
      (i32x4.shl (v128.and (local.get $h) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))))

  ;; f16 -> f32, 8 lanes per step. When all 8 are normal (exponent neither 0 nor 31: the common
  ;; case) only the normal formula runs, else $f32_lanes. The test works on 16-bit lanes:
  ;; (h & 0x7c00) + 0x7c00 (wrapping) maps the normal exponents 0x400..0x7800 onto
  ;; [0x8000, 0xf800), the only values signed-below 0xf800 (0 -> 0x7c00, 0x7c00 -> 0xf800).
  (func (export "f16_to_f32") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $h v128) (local $lo v128) (local $hi v128)
    (local $expMask v128) (local $expBias v128) (local $expLimit v128) (local $emMask v128) (local $rebias v128)
    (local $sign v128)
    (local.set $expMask (i16x8.splat (i32.const 0x7c00)))
    (local.set $expBias (i16x8.splat (i32.const 0x7c00)))
    (local.set $expLimit (i16x8.splat (i32.const 0xf800)))
    (local.set $emMask (i32x4.splat (i32.const 0x7fff)))
    (local.set $rebias (i32x4.splat (i32.const 0x38000000)))
    (local.set $sign (i32x4.splat (i32.const 0x8000)))
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $n) (i32.const 1))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
        (local.set $h (v128.load (local.get $src)))
        (local.set $lo (i32x4.extend_low_i16x8_u (local.get $h)))
        (local.set $hi (i32x4.extend_high_i16x8_u (local.get $h)))
        (if
          (i16x8.all_true
            (i16x8.lt_s
              (i16x8.add (v128.and (local.get $h) (local.get $expMask)) (local.get $expBias))
              (local.get $expLimit)))
          (then
            (v128.store (local.get $dst)
              (v128.or
                (i32x4.add (i32x4.shl (v128.and (local.get $lo) (local.get $emMask)) (i32.const 13)) (local.get $rebias))
                (i32x4.shl (v128.and (local.get $lo) (local.get $sign)) (i32.const 16))))
            (v128.store offset=16 (local.get $dst)
              (v128.or
                (i32x4.add (i32x4.shl (v128.and (local.get $hi) (local.get $emMask)) (i32.const 13)) (local.get $rebias))
                (i32x4.shl (v128.and (local.get $hi) (local.get $sign)) (i32.const 16)))))
          (else
            (v128.store (local.get $dst) (call $f32_lanes (local.get $lo)))
            (v128.store offset=16 (local.get $dst) (call $f32_lanes (local.get $hi)))))
        (local.set $src (i32.add (local.get $src) (i32.const 16)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
        (br $next))))

  ;; f32 -> bf16 of 4 lanes, every case: (f + 0x7fff + lsb) >> 16 with integer wrap-around; NaN lanes
  ;; keep their top half, with the quiet bit set when the kept payload would be zero.
  (func $bf16_lanes (param $f v128) (result v128)
    (local $top v128)
    (local.set $top (i32x4.shr_u (local.get $f) (i32.const 16)))
    (v128.bitselect
      (v128.or (local.get $top)
        (v128.and
          (i32x4.eq (v128.and (local.get $top) (v128.const i32x4 0x7f 0x7f 0x7f 0x7f)) (v128.const i32x4 0 0 0 0))
          (v128.const i32x4 0x40 0x40 0x40 0x40)))
      (i32x4.shr_u
        (i32x4.add
          (i32x4.add (local.get $f) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff))
          (v128.and (local.get $top) (v128.const i32x4 1 1 1 1)))
        (i32.const 16))
      (i32x4.gt_s
        (v128.and (local.get $f) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff))
        (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))))

  (func (export "f32_to_bf16") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $f0 v128) (local $f1 v128)
    (local $absMask v128) (local $inf v128) (local $round v128) (local $one v128)
    (local.set $absMask (i32x4.splat (i32.const 0x7fffffff)))
    (local.set $inf (i32x4.splat (i32.const 0x7f800000)))
    (local.set $round (i32x4.splat (i32.const 0x7fff)))
    (local.set $one (i32x4.splat (i32.const 1)))
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $n) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
        (local.set $f0 (v128.load (local.get $src)))
        (local.set $f1 (v128.load offset=16 (local.get $src)))
        (if
          (v128.any_true
            (v128.or
              (i32x4.gt_s (v128.and (local.get $f0) (local.get $absMask)) (local.get $inf))
              (i32x4.gt_s (v128.and (local.get $f1) (local.get $absMask)) (local.get $inf))))
          (then
            (v128.store (local.get $dst)
              (i8x16.shuffle 0 1 4 5 8 9 12 13 16 17 20 21 24 25 28 29
                (call $bf16_lanes (local.get $f0))
                (call $bf16_lanes (local.get $f1)))))
          (else
            ;; No NaN: the high halves of f + 0x7fff + lsb, picked without a shift.
            (v128.store (local.get $dst)
              (i8x16.shuffle 2 3 6 7 10 11 14 15 18 19 22 23 26 27 30 31
                (i32x4.add (i32x4.add (local.get $f0) (local.get $round))
                  (v128.and (i32x4.shr_u (local.get $f0) (i32.const 16)) (local.get $one)))
                (i32x4.add (i32x4.add (local.get $f1) (local.get $round))
                  (v128.and (i32x4.shr_u (local.get $f1) (i32.const 16)) (local.get $one)))))))
        (local.set $src (i32.add (local.get $src) (i32.const 32)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
        (br $next))))

  ;; bf16 -> f32 (exact), 8 lanes per step: each half moves to the top of a 32-bit lane.
  (func (export "bf16_to_f32") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $h v128)
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $n) (i32.const 1))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
        (local.set $h (v128.load (local.get $src)))
        (v128.store (local.get $dst) (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $h)) (i32.const 16)))
        (v128.store offset=16 (local.get $dst) (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $h)) (i32.const 16)))
        (local.set $src (i32.add (local.get $src) (i32.const 16)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
        (br $next)))))
