;; f32 <-> f16 / bf16 array conversions (and, at the end, the LoRA merge engine built on them) with SIMD128, bit-identical to the TypeScript reference
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
        (br $next))))

  ;; ---------------------------------------------------------------------------------------------
  ;; The LoRA merge engine (core's lora/merge.ts mergeLowRank, whose TypeScript loop is the
  ;; reference and fallback): per 512-column tile of each row, ΔW = coef · basis in float64
  ;; exactly as core's deltaRow orders it, W + ΔW rounded ONCE to the output dtype (f64 -> f32 round
  ;; to odd, then the f16 / bf16 lane formulas above), and, for the exact unmerge, round_in(out - ΔW)
  ;; compared with W's bits. Lanes run across columns, so every element sees the same operations
  ;; in the same order as the scalar loop. dtype codes: 0 f32, 1 f16, 2 bf16.

  ;; 4 elements of dtype $dt at $p (or their bits in $bits when $p < 0) as f32x4 (exact).
  (func $decode4 (param $dt i32) (param $bits v128) (result v128)
    (if (result v128) (i32.eqz (local.get $dt))
      (then (local.get $bits))
      (else
        (if (result v128) (i32.eq (local.get $dt) (i32.const 1))
          (then
            ;; all four normal (exponent neither 0 nor 31): the normal formula only
            (if (result v128)
              (i32x4.all_true
                (i32x4.lt_u
                  (i32x4.sub (v128.and (local.get $bits) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00))
                    (v128.const i32x4 0x400 0x400 0x400 0x400))
                  (v128.const i32x4 0x7400 0x7400 0x7400 0x7400)))
              (then
                (v128.or
                  (i32x4.add (i32x4.shl (v128.and (local.get $bits) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (i32.const 13))
                    (v128.const i32x4 0x38000000 0x38000000 0x38000000 0x38000000))
                  (i32x4.shl (v128.and (local.get $bits) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))))
              (else (call $f32_lanes (local.get $bits)))))
          (else (i32x4.shl (local.get $bits) (i32.const 16)))))))

  ;; 4 elements of dtype $dt at $p as bits in 32-bit lanes (f32 bits, or u16 zero-extended).
  (func $load4 (param $dt i32) (param $p i32) (result v128)
    (if (result v128) (i32.eqz (local.get $dt))
      (then (v128.load (local.get $p)))
      (else (i32x4.extend_low_i16x8_u (v128.load64_zero (local.get $p))))))

  (func $store4 (param $dt i32) (param $p i32) (param $bits v128)
    (if (i32.eqz (local.get $dt))
      (then (v128.store (local.get $p) (local.get $bits)))
      (else (v128.store64_lane 0 (local.get $p) (i16x8.narrow_i32x4_u (local.get $bits) (local.get $bits))))))

  ;; f64 lanes (lo: elements 0-1, hi: 2-3) rounded once to $dt, as bits in 32-bit lanes. f32: one
  ;; round to nearest even. f16/bf16: f64 -> f32 rounded to odd (an inexact result whose last bit is
  ;; even moves one step towards x), then f32 -> f16/bf16 to nearest even: one rounding overall.
  (func $encode4 (param $dt i32) (param $lo v128) (param $hi v128) (result v128)
    (local $r v128) (local $inexact v128) (local $up v128) (local $bits v128) (local $nudge v128)
    (local.set $r
      (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
        (f32x4.demote_f64x2_zero (local.get $lo))
        (f32x4.demote_f64x2_zero (local.get $hi))))
    (if (i32.eqz (local.get $dt)) (then (return (local.get $r))))
    ;; Rounding twice (f64 -> f32 -> f16/bf16) can only differ from once when the f32 lands exactly
    ;; on a midpoint of the narrow format (or, for f16, outside its normal range): without such a
    ;; lane, the second rounding alone is exact.
    (if (i32.eq (local.get $dt) (i32.const 1))
      (then
        (if (i32x4.all_true
              (v128.and
                (v128.not (i32x4.eq (v128.and (local.get $r) (v128.const i32x4 0x1fff 0x1fff 0x1fff 0x1fff))
                  (v128.const i32x4 0x1000 0x1000 0x1000 0x1000)))
                (i32x4.lt_u
                  (i32x4.sub (v128.and (local.get $r) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff))
                    (v128.const i32x4 0x38800000 0x38800000 0x38800000 0x38800000))
                  (v128.const i32x4 0x0f000000 0x0f000000 0x0f000000 0x0f000000))))
          (then
            (local.set $bits (v128.and (local.get $r) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff)))
            (return
              (v128.or
                (i32x4.shr_u
                  (i32x4.add
                    (i32x4.add (local.get $bits) (v128.const i32x4 0xc8000fff 0xc8000fff 0xc8000fff 0xc8000fff))
                    (v128.and (i32x4.shr_u (local.get $bits) (i32.const 13)) (v128.const i32x4 1 1 1 1)))
                  (i32.const 13))
                (v128.and (i32x4.shr_u (local.get $r) (i32.const 16)) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)))))))
      (else
        (if (i32x4.all_true
              (v128.and
                (v128.not (i32x4.eq (v128.and (local.get $r) (v128.const i32x4 0xffff 0xffff 0xffff 0xffff))
                  (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)))
                (i32x4.lt_u (v128.and (local.get $r) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff))
                  (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))))
          (then
            (return
              (i32x4.shr_u
                (i32x4.add (i32x4.add (local.get $r) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff))
                  (v128.and (i32x4.shr_u (local.get $r) (i32.const 16)) (v128.const i32x4 1 1 1 1)))
                (i32.const 16)))))))
    ;; inexact lanes and the direction towards x, as 32-bit masks (low halves of the 64-bit masks)
    (local.set $inexact
      (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27
        (f64x2.ne (f64x2.promote_low_f32x4 (local.get $r)) (local.get $lo))
        (f64x2.ne (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $r) (local.get $r))) (local.get $hi))))
    (local.set $up
      (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27
        (f64x2.gt (f64x2.abs (local.get $lo)) (f64x2.abs (f64x2.promote_low_f32x4 (local.get $r))))
        (f64x2.gt (f64x2.abs (local.get $hi))
          (f64x2.abs (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $r) (local.get $r)))))))
    ;; nudge where inexact, the last bit even and r finite: +1 towards larger magnitude, else -1
    (local.set $nudge
      (v128.and
        (v128.and (local.get $inexact)
          (i32x4.eq (v128.and (local.get $r) (v128.const i32x4 1 1 1 1)) (v128.const i32x4 0 0 0 0)))
        (i32x4.lt_u (v128.and (local.get $r) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff))
          (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))))
    (local.set $bits
      (i32x4.add (local.get $r)
        (v128.and (local.get $nudge)
          (i32x4.sub (v128.const i32x4 0 0 0 0) (v128.or (local.get $up) (v128.const i32x4 1 1 1 1))))))
    (if (result v128) (i32.eq (local.get $dt) (i32.const 1))
      (then (call $f16_lanes (local.get $bits)))
      (else (call $bf16_lanes (local.get $bits)))))

  ;; All 4 encoded lanes finite (not Inf/NaN) in $dt.
  (func $finite4 (param $dt i32) (param $bits v128) (result i32)
    (local $mask i32)
    (local.set $mask
      (if (result i32) (i32.eqz (local.get $dt))
        (then (i32.const 0x7f800000))
        (else (if (result i32) (i32.eq (local.get $dt) (i32.const 1)) (then (i32.const 0x7c00)) (else (i32.const 0x7f80))))))
    (v128.any_true
      (i32x4.eq (v128.and (local.get $bits) (i32x4.splat (local.get $mask))) (i32x4.splat (local.get $mask))))
    (i32.eqz))

  ;; $t[0..n) = the pass's sum over its $width ranks of coef[k] * basis[k, j0 + j], left to right
  ;; (the first product, then + each next one), 4 ranks and 4 columns per step: the running sum
  ;; stays in registers for 4 ranks ($width is 4, 8 or 16).
  (func $deltaPass (param $coef i32) (param $basis i32) (param $cols i32) (param $width i32)
    (param $n i32) (param $t i32)
    (local $k i32) (local $j i32) (local $stride i32) (local $bp i32) (local $tp i32)
    (local $c0 v128) (local $c1 v128) (local $c2 v128) (local $c3 v128)
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128) (local $lo v128) (local $hi v128)
    (local.set $stride (i32.shl (local.get $cols) (i32.const 2)))
    (local.set $k (i32.const 0))
    (loop $ranks
      (local.set $c0 (v128.load64_splat (i32.add (local.get $coef) (i32.shl (local.get $k) (i32.const 3)))))
      (local.set $c1 (v128.load64_splat offset=8 (i32.add (local.get $coef) (i32.shl (local.get $k) (i32.const 3)))))
      (local.set $c2 (v128.load64_splat offset=16 (i32.add (local.get $coef) (i32.shl (local.get $k) (i32.const 3)))))
      (local.set $c3 (v128.load64_splat offset=24 (i32.add (local.get $coef) (i32.shl (local.get $k) (i32.const 3)))))
      (local.set $bp (i32.add (local.get $basis) (i32.mul (local.get $k) (local.get $stride))))
      (local.set $tp (local.get $t))
      (local.set $j (i32.const 0))
      (loop $cols
        (local.set $b0 (v128.load (local.get $bp)))
        (local.set $b1 (v128.load (i32.add (local.get $bp) (local.get $stride))))
        (local.set $b2 (v128.load (i32.add (local.get $bp) (i32.shl (local.get $stride) (i32.const 1)))))
        (local.set $b3 (v128.load (i32.add (local.get $bp) (i32.mul (local.get $stride) (i32.const 3)))))
        (if (i32.eqz (local.get $k))
          (then
            (local.set $lo (f64x2.mul (local.get $c0) (f64x2.promote_low_f32x4 (local.get $b0))))
            (local.set $hi (f64x2.mul (local.get $c0)
              (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $b0) (local.get $b0))))))
          (else
            (local.set $lo (f64x2.add (v128.load (local.get $tp))
              (f64x2.mul (local.get $c0) (f64x2.promote_low_f32x4 (local.get $b0)))))
            (local.set $hi (f64x2.add (v128.load offset=16 (local.get $tp))
              (f64x2.mul (local.get $c0)
                (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $b0) (local.get $b0))))))))
        (local.set $lo (f64x2.add (local.get $lo) (f64x2.mul (local.get $c1) (f64x2.promote_low_f32x4 (local.get $b1)))))
        (local.set $hi (f64x2.add (local.get $hi) (f64x2.mul (local.get $c1)
          (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $b1) (local.get $b1))))))
        (local.set $lo (f64x2.add (local.get $lo) (f64x2.mul (local.get $c2) (f64x2.promote_low_f32x4 (local.get $b2)))))
        (local.set $hi (f64x2.add (local.get $hi) (f64x2.mul (local.get $c2)
          (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $b2) (local.get $b2))))))
        (local.set $lo (f64x2.add (local.get $lo) (f64x2.mul (local.get $c3) (f64x2.promote_low_f32x4 (local.get $b3)))))
        (local.set $hi (f64x2.add (local.get $hi) (f64x2.mul (local.get $c3)
          (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $b3) (local.get $b3))))))
        (v128.store (local.get $tp) (local.get $lo))
        (v128.store offset=16 (local.get $tp) (local.get $hi))
        (local.set $bp (i32.add (local.get $bp) (i32.const 16)))
        (local.set $tp (i32.add (local.get $tp) (i32.const 32)))
        (br_if $cols (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 4))) (local.get $n))))
      (br_if $ranks (i32.lt_u (local.tee $k (i32.add (local.get $k) (i32.const 4))) (local.get $width)))))

  ;; Merges $rows rows of $cols columns ($cols a multiple of 4). Memory: $w the weight rows ($inDt),
  ;; $out the merged rows ($outDt), $coef [rows, chunks * width] f64, $basis [chunks * width, cols]
  ;; f32, $d and $t scratch of 512 f64 each, $idx room for rows * cols u32. With $capture, the flat
  ;; positions ($first + row * cols + col, tile by tile) where round_in(out - ΔW) misses W's bits go
  ;; to $idx.
  ;; Returns how many, or -1 as soon as a merged value is not finite (the caller then reruns the
  ;; TypeScript reference, which owns the NaN/Inf rules).
  (func (export "merge_rows")
    (param $w i32) (param $inDt i32) (param $out i32) (param $outDt i32)
    (param $coef i32) (param $basis i32) (param $rows i32) (param $cols i32)
    (param $chunks i32) (param $width i32) (param $capture i32)
    (param $d i32) (param $t i32) (param $idx i32) (param $first i32) (result i32)
    (local $j0 i32) (local $n i32) (local $i i32) (local $q i32) (local $j i32) (local $e i32)
    (local $inShift i32) (local $outShift i32) (local $found i32) (local $rowCoef i32)
    (local $dp i32) (local $tp i32)
    (local $f v128) (local $lo v128) (local $hi v128) (local $bits v128) (local $back v128) (local $miss v128)
    (local.set $inShift (select (i32.const 2) (i32.const 1) (i32.eqz (local.get $inDt))))
    (local.set $outShift (select (i32.const 2) (i32.const 1) (i32.eqz (local.get $outDt))))
    (local.set $j0 (i32.const 0))
    (block $done
      (loop $tiles
        (br_if $done (i32.ge_u (local.get $j0) (local.get $cols)))
        (local.set $n (i32.sub (local.get $cols) (local.get $j0)))
        (if (i32.gt_u (local.get $n) (i32.const 512)) (then (local.set $n (i32.const 512))))
        (local.set $i (i32.const 0))
        (block $rowsDone
          (loop $rowsLoop
            (br_if $rowsDone (i32.ge_u (local.get $i) (local.get $rows)))
            ;; ΔW of this tile of row i into $d: pass 0 directly, later passes via $t, then d += t
            (local.set $rowCoef
              (i32.add (local.get $coef)
                (i32.shl (i32.mul (i32.mul (local.get $i) (local.get $chunks)) (local.get $width)) (i32.const 3))))
            (local.set $q (i32.const 0))
            (loop $passes
              (call $deltaPass
                (i32.add (local.get $rowCoef) (i32.shl (i32.mul (local.get $q) (local.get $width)) (i32.const 3)))
                (i32.add (local.get $basis)
                  (i32.shl
                    (i32.add (i32.mul (i32.mul (local.get $q) (local.get $width)) (local.get $cols)) (local.get $j0))
                    (i32.const 2)))
                (local.get $cols) (local.get $width) (local.get $n)
                (select (local.get $t) (local.get $d) (local.get $q)))
              (if (local.get $q)
                (then
                  (local.set $dp (local.get $d))
                  (local.set $tp (local.get $t))
                  (local.set $j (i32.const 0))
                  (loop $sum
                    (v128.store (local.get $dp) (f64x2.add (v128.load (local.get $dp)) (v128.load (local.get $tp))))
                    (local.set $dp (i32.add (local.get $dp) (i32.const 16)))
                    (local.set $tp (i32.add (local.get $tp) (i32.const 16)))
                    (br_if $sum (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 2))) (local.get $n))))))
              (br_if $passes (i32.lt_u (local.tee $q (i32.add (local.get $q) (i32.const 1))) (local.get $chunks))))
            ;; W + ΔW, rounded once; the unmerge replayed when capturing
            (local.set $j (i32.const 0))
            (local.set $dp (local.get $d))
            (loop $elems
              (local.set $e (i32.add (i32.mul (local.get $i) (local.get $cols)) (i32.add (local.get $j0) (local.get $j))))
              (local.set $f
                (call $decode4 (local.get $inDt)
                  (call $load4 (local.get $inDt) (i32.add (local.get $w) (i32.shl (local.get $e) (local.get $inShift))))))
              (local.set $lo (f64x2.add (f64x2.promote_low_f32x4 (local.get $f)) (v128.load (local.get $dp))))
              (local.set $hi
                (f64x2.add
                  (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $f) (local.get $f)))
                  (v128.load offset=16 (local.get $dp))))
              (local.set $bits (call $encode4 (local.get $outDt) (local.get $lo) (local.get $hi)))
              (if (i32.eqz (call $finite4 (local.get $outDt) (local.get $bits))) (then (return (i32.const -1))))
              (call $store4 (local.get $outDt) (i32.add (local.get $out) (i32.shl (local.get $e) (local.get $outShift))) (local.get $bits))
              (if (local.get $capture)
                (then
                  (local.set $f (call $decode4 (local.get $outDt) (local.get $bits)))
                  (local.set $lo (f64x2.sub (f64x2.promote_low_f32x4 (local.get $f)) (v128.load (local.get $dp))))
                  (local.set $hi
                    (f64x2.sub
                      (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $f) (local.get $f)))
                      (v128.load offset=16 (local.get $dp))))
                  (local.set $back (call $encode4 (local.get $inDt) (local.get $lo) (local.get $hi)))
                  (local.set $miss
                    (v128.not
                      (i32x4.eq (local.get $back)
                        (call $load4 (local.get $inDt) (i32.add (local.get $w) (i32.shl (local.get $e) (local.get $inShift)))))))
                  (if (v128.any_true (local.get $miss))
                    (then
                      (local.set $e (i32.add (local.get $e) (local.get $first)))
                      (if (i32x4.extract_lane 0 (local.get $miss))
                        (then (i32.store (i32.add (local.get $idx) (i32.shl (local.get $found) (i32.const 2))) (local.get $e))
                              (local.set $found (i32.add (local.get $found) (i32.const 1)))))
                      (if (i32x4.extract_lane 1 (local.get $miss))
                        (then (i32.store (i32.add (local.get $idx) (i32.shl (local.get $found) (i32.const 2))) (i32.add (local.get $e) (i32.const 1)))
                              (local.set $found (i32.add (local.get $found) (i32.const 1)))))
                      (if (i32x4.extract_lane 2 (local.get $miss))
                        (then (i32.store (i32.add (local.get $idx) (i32.shl (local.get $found) (i32.const 2))) (i32.add (local.get $e) (i32.const 2)))
                              (local.set $found (i32.add (local.get $found) (i32.const 1)))))
                      (if (i32x4.extract_lane 3 (local.get $miss))
                        (then (i32.store (i32.add (local.get $idx) (i32.shl (local.get $found) (i32.const 2))) (i32.add (local.get $e) (i32.const 3)))
                              (local.set $found (i32.add (local.get $found) (i32.const 1)))))))))
              (local.set $dp (i32.add (local.get $dp) (i32.const 32)))
              (br_if $elems (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 4))) (local.get $n))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $rowsLoop)))
        (local.set $j0 (i32.add (local.get $j0) (i32.const 512)))
        (br $tiles)))
    (local.get $found)))
