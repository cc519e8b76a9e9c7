// Typed error for the image module. code CORRUPT: an image (or a stream claiming to be one) is
// damaged, truncated, foreign, or uses a version/feature this reader does not know. code INVALID:
// bad planning input or a misbehaving block source on the producing side. `where` names the
// first bad place (e.g. "header.magic", "data slot 12"); `offset` is the absolute image offset.

export type ImageErrorCode = 'CORRUPT' | 'INVALID';

export class ImageError extends Error {
  readonly code: ImageErrorCode;
  readonly where: string;
  readonly offset?: number;

  constructor(code: ImageErrorCode, where: string, message: string, offset?: number) {
    super(`${code === 'CORRUPT' ? 'corrupt image' : 'invalid image input'}: ${where}` +
      `${offset === undefined ? '' : ` @${offset}`}: ${message}`);
    this.name = 'ImageError';
    this.code = code;
    this.where = where;
    if (offset !== undefined) this.offset = offset;
  }
}

export function corrupt(where: string, message: string, offset?: number): ImageError {
  return new ImageError('CORRUPT', where, message, offset);
}

export function invalid(where: string, message: string): ImageError {
  return new ImageError('INVALID', where, message);
}
