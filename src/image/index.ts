// Public API of the compacted-copy image format (spec: FORMAT.md). Re-exports only.

export { crc32, Crc32 } from '../util/crc32.js';
export { ImageError, type ImageErrorCode } from './imageError.js';
export {
  planImage, computeLayout, locate, describeOffset, groupSlots, defaultGroupBlocks,
  HEADER_LENGTH, TRAILER_RECORD_LENGTH, TABLE_ALIGN, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE, MAX_STRING_BYTES,
  type ImageIdentity, type ImagePlanInput, type ImagePlan, type ImageLayout, type ImageRegion, type ImageLocation,
} from './layout.js';
export {
  MAGIC, TRAILER_MAGIC, VERSION, H as HEADER_FIELDS, T as TRAILER_FIELDS, decodeHeader, decodeTrailer,
  type ImageHeader, type TrailerRecord,
} from './header.js';
export { ImageProducer, type ReadBlock, type ProducerOptions } from './writer.js';
export type { ImageSource } from './byteSource.js';
export {
  readImage, parseImage, type ImageEvent, type ImageHandler, type ImageReport, type ImageTables, type ReadOptions,
} from './reader.js';
export {
  verifyImage, inspectImage, formatInspection, formatRuns, type ImageInspection, type SlotEntry,
} from './inspect.js';
