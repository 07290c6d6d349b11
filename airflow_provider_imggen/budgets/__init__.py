"""
Budgets enforced before billing, across processes: a limit per DAG run, per DAG per day or per account per
day, in images or a currency (:mod:`.limits`), kept in the billing ledger's store (:mod:`.book`) and applied
to each billable send of a task instance (:mod:`.guard`).
"""
