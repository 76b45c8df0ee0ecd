import { describe, expect, it } from 'vitest';
import { parseByteSize, parsePercent, parsePressureThresholds } from '../../src/polite/parse.js';

describe('politeness settings as written', () => {
  it('sizes: binary and decimal units, fractions, a /s suffix', () => {
    expect(parseByteSize('200MiB')).toBe(200 * 2 ** 20);
    expect(parseByteSize('1G')).toBe(1e9);
    expect(parseByteSize('1.5GiB')).toBe(1.5 * 2 ** 30);
    expect(parseByteSize('512k')).toBe(512_000);
    expect(parseByteSize('4096')).toBe(4096);
    expect(parseByteSize('100MB/s')).toBe(1e8);
    expect(parseByteSize(' 2 mib ')).toBe(2 * 2 ** 20);
  });

  it('sizes: bad input says what is wrong', () => {
    expect(() => parseByteSize('20X')).toThrow('"20X" is not a size: use a number with an optional unit');
    expect(() => parseByteSize('')).toThrow('is not a size');
    expect(() => parseByteSize('-5M')).toThrow('is not a size');
    expect(() => parseByteSize('0')).toThrow('more than 0 bytes');
    expect(() => parseByteSize('99999999TiB')).toThrow('less than 8 PiB');
  });

  it('pressure thresholds', () => {
    expect(parsePressureThresholds('io=20')).toEqual({ io: 20 });
    expect(parsePressureThresholds('io=20,cpu=50, memory=10%')).toEqual({ io: 20, cpu: 50, memory: 10 });
    expect(() => parsePressureThresholds('gpu=3')).toThrow('unknown resource "gpu" in "gpu=3" (known: io, cpu, memory)');
    expect(() => parsePressureThresholds('io=20,io=30')).toThrow('io is given twice');
    expect(() => parsePressureThresholds('io')).toThrow('"io" is not RESOURCE=PERCENT');
    expect(() => parsePressureThresholds('io=0')).toThrow('above 0 and at most 100');
    expect(() => parsePressureThresholds('io=20,')).toThrow('is not a list of RESOURCE=PERCENT');
  });

  it('percentages', () => {
    expect(parsePercent('80')).toBe(80);
    expect(parsePercent('12.5%')).toBe(12.5);
    expect(() => parsePercent('101')).toThrow('at most 100');
    expect(() => parsePercent('x')).toThrow('"x"');
  });
});
