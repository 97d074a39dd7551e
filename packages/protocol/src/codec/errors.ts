import { InvalidArgumentError } from "../errors.js";

/**
 * A value the codec cannot encode, or bytes it cannot decode. `field` is the
 * path of the offending part of the value (`args[1].handler`) when encoding,
 * and `bytes` when decoding; the message is `<field>: <rule>`.
 *
 * @example
 * try { encodeValue({ f() {} }, { path: "args" }); }
 * catch (e) { if (e instanceof CodecError) console.log(e.message); } // args.f: functions cannot be encoded
 */
export class CodecError extends InvalidArgumentError {}
