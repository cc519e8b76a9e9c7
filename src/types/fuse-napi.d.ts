// Hand-written declarations for the part of fuse-napi 2.3.x (FUSE 3.1 API) that src/fuse uses. The package
// ships its own types; these keep the FUSE edge on a small, reviewed surface. `any` is confined to this file.
declare module 'fuse-napi' {
  type Cb = (...args: any[]) => void;
  interface FuseOps {
    [op: string]: ((...args: any[]) => any) | undefined;
  }
  interface FuseOpts {
    [k: string]: unknown;
  }
  class Fuse {
    constructor(mnt: string, ops: FuseOps, opts?: FuseOpts);
    mnt: string;
    opts: FuseOpts;
    mount(cb: (err?: (Error & { code?: string }) | null) => void): void;
    unmount(cb: (err?: Error | null) => void): void;
    _fuseOptions(): string;
    static unmount(mnt: string, cb: Cb): void;
    static [errno: string]: any;
  }
  export = Fuse;
}
