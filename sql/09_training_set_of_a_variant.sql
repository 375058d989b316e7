-- What it answers: the training set of one variant (here MIRA-Source): each kept document once, with its
-- text, tokens and composite, and which other variants keep it too. `selected` holds each kept document
-- once with `variants` (the sorted names of the variants that kept it), so one variant's set is
-- `WHERE array_contains(variants, '<variant>')`; mira_selected_by_variant has one row per variant instead.
-- Views: mira_selected.
SELECT doc_id,
       source,
       scorer,
       round(composite, 3)                                   AS composite,
       tokens,
       array_join(array_remove(variants, 'source'), ',')     AS also_kept_by,
       length(text)                                          AS text_chars
FROM mira_selected
WHERE array_contains(variants, 'source')
ORDER BY source, composite DESC, doc_id
