/**
 * A strict parser for Structured Field Dictionaries (RFC 8941 §4.2.2), as targeted cache-control
 * fields (RFC 9213 §2.2) are: any syntax error fails the whole field, with no repair. It follows
 * the RFC's parsing algorithms step by step; parameters are checked and then dropped, since the
 * one use ignores them (RFC 9213 §2.2).
 */

/** A member's value: a bare item, or an Inner List (its items are not needed, only its shape). */
export type SfValue =
  | { type: "integer" | "decimal"; value: number }
  | { type: "string" | "token" | "byte-sequence"; value: string }
  | { type: "boolean"; value: boolean }
  | { type: "inner-list" }

/** Thrown inside the parser: RFC 8941 says "fail parsing", and the caller ignores the field. */
class ParseError extends Error {}

const KEY_START = /[a-z*]/
const KEY_CHAR = /[a-z0-9_\-.*]/
const ALPHA = /[A-Za-z]/
const DIGIT = /[0-9]/
// RFC 8941 §3.3.4: tchar (RFC 9110 §5.6.2), ":" and "/".
const TOKEN_CHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z:/]/
const BASE64_CHAR = /[A-Za-z0-9+/=]/

/** The dictionary's members (a later duplicate key's value replaces an earlier one's), or undefined when it does not parse. */
export function parseDictionary(input: string): Map<string, SfValue> | undefined {
  try {
    return new Parser(input).dictionary()
  } catch (error) {
    if (error instanceof ParseError) return undefined
    throw error
  }
}

class Parser {
  private at = 0

  constructor(private readonly input: string) {}

  /** RFC 8941 §4.2 with §4.2.2: leading and trailing SP, then members separated by OWS "," OWS. */
  dictionary(): Map<string, SfValue> {
    const members = new Map<string, SfValue>()
    this.skip(" ")
    while (!this.done()) {
      const key = this.key()
      let value: SfValue = { type: "boolean", value: true }
      if (this.peek() === "=") {
        this.at++
        value = this.peek() === "(" ? this.innerList() : this.bareItem()
      }
      this.parameters()
      members.set(key, value) // RFC 8941 §4.2.2: a duplicate key overwrites the earlier value
      this.skipOws()
      if (this.done()) break
      if (this.next() !== ",") throw new ParseError()
      this.skipOws()
      if (this.done()) throw new ParseError() // a trailing comma
    }
    return members
  }

  /** §4.2.1.2 */
  private innerList(): SfValue {
    this.expect("(")
    for (;;) {
      this.skip(" ")
      if (this.peek() === ")") {
        this.at++
        return { type: "inner-list" }
      }
      this.bareItem()
      this.parameters()
      const after = this.peek()
      if (after !== " " && after !== ")") throw new ParseError()
    }
  }

  /** §4.2.3.2: parameters are parsed for validity and dropped. */
  private parameters(): void {
    while (this.peek() === ";") {
      this.at++
      this.skip(" ")
      this.key()
      if (this.peek() === "=") {
        this.at++
        this.bareItem()
      }
    }
  }

  /** §4.2.3.3 */
  private key(): string {
    const start = this.at
    if (!KEY_START.test(this.peek())) throw new ParseError()
    while (KEY_CHAR.test(this.peek())) this.at++
    return this.input.slice(start, this.at)
  }

  /** §4.2.3.1 */
  private bareItem(): SfValue {
    const first = this.peek()
    if (first === "-" || DIGIT.test(first)) return this.number()
    if (first === '"') return this.string()
    if (first === ":") return this.byteSequence()
    if (first === "?") return this.boolean()
    if (first === "*" || ALPHA.test(first)) return this.token()
    throw new ParseError()
  }

  /** §4.2.4: at most 15 integer digits; a decimal has 1-12 digits, a dot and 1-3 digits. */
  private number(): SfValue {
    const start = this.at
    if (this.peek() === "-") this.at++
    const digitsStart = this.at
    while (DIGIT.test(this.peek())) this.at++
    const integerDigits = this.at - digitsStart
    if (integerDigits === 0) throw new ParseError()
    if (this.peek() !== ".") {
      if (integerDigits > 15) throw new ParseError()
      return { type: "integer", value: Number(this.input.slice(start, this.at)) }
    }
    if (integerDigits > 12) throw new ParseError()
    this.at++
    const fractionStart = this.at
    while (DIGIT.test(this.peek())) this.at++
    const fractionDigits = this.at - fractionStart
    if (fractionDigits < 1 || fractionDigits > 3) throw new ParseError()
    return { type: "decimal", value: Number(this.input.slice(start, this.at)) }
  }

  /** §4.2.5: printable ASCII; a backslash escapes only `"` and itself. */
  private string(): SfValue {
    this.expect('"')
    let value = ""
    for (;;) {
      if (this.done()) throw new ParseError()
      const char = this.next()
      if (char === '"') return { type: "string", value }
      if (char === "\\") {
        const escaped = this.next()
        if (escaped !== '"' && escaped !== "\\") throw new ParseError()
        value += escaped
      } else if (char < " " || char > "~") throw new ParseError()
      else value += char
    }
  }

  /** §4.2.6 */
  private token(): SfValue {
    const start = this.at
    this.at++ // ALPHA or "*", checked by bareItem
    while (TOKEN_CHAR.test(this.peek())) this.at++
    return { type: "token", value: this.input.slice(start, this.at) }
  }

  /** §4.2.7: base64 between colons (its decoding is not needed). */
  private byteSequence(): SfValue {
    this.expect(":")
    const start = this.at
    while (BASE64_CHAR.test(this.peek())) this.at++
    const value = this.input.slice(start, this.at)
    this.expect(":")
    return { type: "byte-sequence", value }
  }

  /** §4.2.8 */
  private boolean(): SfValue {
    this.expect("?")
    const char = this.next()
    if (char !== "0" && char !== "1") throw new ParseError()
    return { type: "boolean", value: char === "1" }
  }

  private done(): boolean {
    return this.at >= this.input.length
  }

  /** The next character, or "" at the end (which no character class matches). */
  private peek(): string {
    return this.input.charAt(this.at)
  }

  private next(): string {
    const char = this.peek()
    if (char === "") throw new ParseError()
    this.at++
    return char
  }

  private expect(char: string): void {
    if (this.next() !== char) throw new ParseError()
  }

  private skip(char: string): void {
    while (this.peek() === char) this.at++
  }

  /** OWS: spaces and horizontal tabs. */
  private skipOws(): void {
    while (this.peek() === " " || this.peek() === "\t") this.at++
  }
}
