// Hand-written declarations for fuse-native 2.2.6 (the package ships none). `any` is confined to this file.
declare module 'fuse-native' {
  type Cb = (...args: any[]) => void;
  interface FuseOps {
    [op: string]: ((...args: any[]) => void) | undefined;
  }
  interface FuseOpts {
    [k: string]: unknown;
  }
  class Fuse {
    constructor(mnt: string, ops: FuseOps, opts?: FuseOpts);
    mnt: string;
    opts: FuseOpts;
    mount(cb: (err?: Error | null) => void): void;
    unmount(cb: (err?: Error | null) => void): void;
    _fuseOptions(): string;
    static unmount(mnt: string, cb: Cb): void;
    static isConfigured(cb: Cb): void;
    static [errno: string]: any;
  }
  export = Fuse;
}
