;; NF4 / FP4 blockwise 4-bit quantization with SIMD128: the same bytes as the TypeScript kernel
;; in ../blockwise-kernel.ts (tested block by block), which stays the reference and the fallback.
;; Regenerate the embedded bytes with `node scripts/build-wasm.mjs` after editing.
;;
;; Per block: absmax = max |x| (as integer max over the float32 bit patterns with the sign cleared:
;; for non-negative floats bit order is numeric order, and NaN/Inf are the patterns >= 0x7f800000);
;; inv = f32(1 / absmax); y = f32(x * inv) (f32x4.mul rounds exactly like Math.fround(x * inv));
;;   NF4: code = the number of the 15 thresholds t with y > t;
;;   FP4: level = the number of the 7 thresholds t with |y| > t, index = level + (y < 0 ? 8 : 0);
;; then code = table[index] (i8x16.swizzle; NF4's table is the identity). NaN y (0 * Inf in a block
;; whose 1/absmax overflows) fails every compare: index 0, code 0, as in the reference.
;; Packing: value 2j in the high nibble of byte j.
(module
  (memory (export "memory") 32) ;; 2 MiB: values, packed codes, absmax, tables (laid out by the caller)

  ;; Quantizes the `n` values at `values` (float32; the caller zero-fills them up to a multiple of
  ;; 8) in blocks of `blockSize` (a multiple of 8) into `packed` and `absmax`. `tables`: NF4
  ;; thresholds (15 x f32) at +0, FP4 thresholds (7 x f32) at +64, the 16-byte code table at +96.
  ;; Returns -1, or the index of the first block holding NaN or Inf (its outputs unwritten).
  (func (export "quantize_blocks")
    (param $values i32) (param $n i32) (param $blockSize i32) (param $packed i32) (param $absmax i32)
    (param $tables i32) (param $fp4 i32) (result i32)
    (local $b i32) (local $blocks i32) (local $p i32) (local $end i32) (local $q i32) (local $len i32)
    (local $mbits i32) (local $m v128) (local $inv v128) (local $y0 v128) (local $y1 v128)
    (local $r0 v128) (local $r1 v128) (local $c v128) (local $lut v128) (local $zero v128)
    (local $absMask v128) (local $signIndex v128)
    (local $t0 v128) (local $t1 v128) (local $t2 v128) (local $t3 v128) (local $t4 v128) (local $t5 v128) (local $t6 v128) (local $t7 v128) (local $t8 v128) (local $t9 v128) (local $t10 v128) (local $t11 v128) (local $t12 v128) (local $t13 v128) (local $t14 v128)
    (local $u0 v128) (local $u1 v128) (local $u2 v128) (local $u3 v128) (local $u4 v128) (local $u5 v128) (local $u6 v128)
    (local.set $t0 (v128.load32_splat offset=0 (local.get $tables)))
    (local.set $t1 (v128.load32_splat offset=4 (local.get $tables)))
    (local.set $t2 (v128.load32_splat offset=8 (local.get $tables)))
    (local.set $t3 (v128.load32_splat offset=12 (local.get $tables)))
    (local.set $t4 (v128.load32_splat offset=16 (local.get $tables)))
    (local.set $t5 (v128.load32_splat offset=20 (local.get $tables)))
    (local.set $t6 (v128.load32_splat offset=24 (local.get $tables)))
    (local.set $t7 (v128.load32_splat offset=28 (local.get $tables)))
    (local.set $t8 (v128.load32_splat offset=32 (local.get $tables)))
    (local.set $t9 (v128.load32_splat offset=36 (local.get $tables)))
    (local.set $t10 (v128.load32_splat offset=40 (local.get $tables)))
    (local.set $t11 (v128.load32_splat offset=44 (local.get $tables)))
    (local.set $t12 (v128.load32_splat offset=48 (local.get $tables)))
    (local.set $t13 (v128.load32_splat offset=52 (local.get $tables)))
    (local.set $t14 (v128.load32_splat offset=56 (local.get $tables)))
    (local.set $u0 (v128.load32_splat offset=64 (local.get $tables)))
    (local.set $u1 (v128.load32_splat offset=68 (local.get $tables)))
    (local.set $u2 (v128.load32_splat offset=72 (local.get $tables)))
    (local.set $u3 (v128.load32_splat offset=76 (local.get $tables)))
    (local.set $u4 (v128.load32_splat offset=80 (local.get $tables)))
    (local.set $u5 (v128.load32_splat offset=84 (local.get $tables)))
    (local.set $u6 (v128.load32_splat offset=88 (local.get $tables)))
    (local.set $lut (v128.load offset=96 (local.get $tables)))
    (local.set $absMask (i32x4.splat (i32.const 0x7fffffff)))
    (local.set $signIndex (i32x4.splat (i32.const 8)))
    (local.set $blocks (i32.div_u (i32.add (local.get $n) (i32.sub (local.get $blockSize) (i32.const 1))) (local.get $blockSize)))
    (block $done
      (loop $block
        (br_if $done (i32.ge_u (local.get $b) (local.get $blocks)))
        ;; values of this block: [p, end), padded to whole steps of 8
        (local.set $p (i32.add (local.get $values) (i32.shl (i32.mul (local.get $b) (local.get $blockSize)) (i32.const 2))))
        (local.set $len (i32.sub (local.get $n) (i32.mul (local.get $b) (local.get $blockSize))))
        (if (i32.gt_u (local.get $len) (local.get $blockSize)) (then (local.set $len (local.get $blockSize))))
        (local.set $end (i32.add (local.get $p) (i32.shl (i32.and (i32.add (local.get $len) (i32.const 7)) (i32.const -8)) (i32.const 2))))
        ;; absmax over the bit patterns, 8 values per step
        (local.set $m (local.get $zero))
        (local.set $q (local.get $p))
        (loop $max
          (local.set $m
            (i32x4.max_s (local.get $m)
              (i32x4.max_s
                (v128.and (v128.load (local.get $q)) (local.get $absMask))
                (v128.and (v128.load offset=16 (local.get $q)) (local.get $absMask)))))
          (local.set $q (i32.add (local.get $q) (i32.const 32)))
          (br_if $max (i32.lt_u (local.get $q) (local.get $end))))
        (local.set $m (i32x4.max_s (local.get $m) (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $m) (local.get $m))))
        (local.set $m (i32x4.max_s (local.get $m) (i8x16.shuffle 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 (local.get $m) (local.get $m))))
        (local.set $mbits (i32x4.extract_lane 0 (local.get $m)))
        (if (i32.ge_u (local.get $mbits) (i32.const 0x7f800000)) (then (return (local.get $b))))
        (i32.store (i32.add (local.get $absmax) (i32.shl (local.get $b) (i32.const 2))) (local.get $mbits))
        (local.set $inv (f32x4.splat (f32.div (f32.const 1) (f32.reinterpret_i32 (local.get $mbits)))))
        ;; codes, 8 values (4 bytes) per step; block starts are even, so bytes start at b*blockSize/2
        (local.set $q (i32.add (local.get $packed) (i32.shr_u (i32.mul (local.get $b) (local.get $blockSize)) (i32.const 1))))
        (if (local.get $fp4)
          (then
            (loop $fp4step
              (local.set $y0 (f32x4.mul (v128.load (local.get $p)) (local.get $inv)))
              (local.set $y1 (f32x4.mul (v128.load offset=16 (local.get $p)) (local.get $inv)))
              (local.set $r0 (v128.and (f32x4.lt (local.get $y0) (local.get $zero)) (local.get $signIndex)))
              (local.set $r1 (v128.and (f32x4.lt (local.get $y1) (local.get $zero)) (local.get $signIndex)))
              (local.set $y0 (f32x4.abs (local.get $y0)))
              (local.set $y1 (f32x4.abs (local.get $y1)))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $u0))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $u1))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $u2))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $u3))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $u4))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $u5))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $u6))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $u0))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $u1))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $u2))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $u3))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $u4))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $u5))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $u6))))
              ;; ranks (8 x i32) -> bytes -> codes through the table; pack byte j = code[2j] << 4 | code[2j + 1]
              (local.set $c
              (i8x16.swizzle (local.get $lut)
                (i8x16.narrow_i16x8_u
                  (i16x8.narrow_i32x4_u (local.get $r0) (local.get $r1))
                  (local.get $zero))))
              (v128.store32_lane 0 (local.get $q)
              (i8x16.shuffle 0 2 4 6 0 2 4 6 0 2 4 6 0 2 4 6
                (v128.or (i16x8.shl (local.get $c) (i32.const 4)) (i16x8.shr_u (local.get $c) (i32.const 8)))
                (local.get $c)))
              (local.set $q (i32.add (local.get $q) (i32.const 4)))
              (local.set $p (i32.add (local.get $p) (i32.const 32)))
              (br_if $fp4step (i32.lt_u (local.get $p) (local.get $end)))))
          (else
            (loop $nf4step
              (local.set $y0 (f32x4.mul (v128.load (local.get $p)) (local.get $inv)))
              (local.set $y1 (f32x4.mul (v128.load offset=16 (local.get $p)) (local.get $inv)))
              (local.set $r0 (local.get $zero))
              (local.set $r1 (local.get $zero))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t0))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t1))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t2))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t3))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t4))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t5))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t6))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t7))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t8))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t9))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t10))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t11))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t12))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t13))))
              (local.set $r0 (i32x4.sub (local.get $r0) (f32x4.gt (local.get $y0) (local.get $t14))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t0))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t1))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t2))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t3))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t4))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t5))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t6))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t7))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t8))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t9))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t10))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t11))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t12))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t13))))
              (local.set $r1 (i32x4.sub (local.get $r1) (f32x4.gt (local.get $y1) (local.get $t14))))
              ;; ranks (8 x i32) -> bytes -> codes through the table; pack byte j = code[2j] << 4 | code[2j + 1]
              (local.set $c
              (i8x16.swizzle (local.get $lut)
                (i8x16.narrow_i16x8_u
                  (i16x8.narrow_i32x4_u (local.get $r0) (local.get $r1))
                  (local.get $zero))))
              (v128.store32_lane 0 (local.get $q)
              (i8x16.shuffle 0 2 4 6 0 2 4 6 0 2 4 6 0 2 4 6
                (v128.or (i16x8.shl (local.get $c) (i32.const 4)) (i16x8.shr_u (local.get $c) (i32.const 8)))
                (local.get $c)))
              (local.set $q (i32.add (local.get $q) (i32.const 4)))
              (local.set $p (i32.add (local.get $p) (i32.const 32)))
              (br_if $nf4step (i32.lt_u (local.get $p) (local.get $end))))))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (br $block)))
    (i32.const -1)))
