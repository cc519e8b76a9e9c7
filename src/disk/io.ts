/**
 * A disk's block I/O, for the disk layer and its tests: reads (read.ts), writes (write.ts), discard
 * (discard.ts). Everything above the disk layer goes through the view and disk interface (view.ts).
 */
export { readView, readViewNow } from './read.js';
export { writeDisk, writeDiskNow, writeExclusive, reserveBlocks } from './write.js';
export { discardRange } from './discard.js';
