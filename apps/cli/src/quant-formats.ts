import { isBnb4Format, isNBitsFormat, QUANT_FORMATS, type QuantFormat } from '@lora/quant';
import { UsageError } from './errors.js';

/**
 * The 4-bit formats every command accepts are @lora/quant's `QUANT_FORMATS`, never a list of the
 * CLI's own: a format added there is accepted, listed in help and named in errors everywhere.
 */

/** The formats as help text and errors list them: "nf4, fp4, int4, uint4". */
export const QUANT_FORMAT_LIST = QUANT_FORMATS.join(', ');
/** The bitsandbytes formats (MatMulBnb4), for help text: "nf4/fp4". */
export const BNB4_FORMAT_LIST = QUANT_FORMATS.filter(isBnb4Format).join('/');
/** The integer formats (MatMulNBits), for help text: "int4/uint4". */
export const NBITS_FORMAT_LIST = QUANT_FORMATS.filter(isNBitsFormat).join('/');

/** Parser of a flag naming a 4-bit format (e.g. `--quant`): exactly one of `QUANT_FORMATS`. */
export function parseQuantFlag(flag: string): (value: string) => QuantFormat {
  return (value) => {
    const format = QUANT_FORMATS.find((f) => f === value);
    if (format) return format;
    throw new UsageError(`--${flag} must be one of ${QUANT_FORMAT_LIST}, got "${value}".`);
  };
}
